"""Video-source fulfiller: delivers creative masters to an ad platform's pre-signed upload URLs."""

__version__ = "0.1.0"
