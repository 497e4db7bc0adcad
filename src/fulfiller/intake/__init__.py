"""Intake: the webhook receiver, signature checks, and the rules that admit an event as a job."""
