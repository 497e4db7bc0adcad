"""Operations: the admin API and console, operator commands, test events and the demo."""
