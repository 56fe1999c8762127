"""relayguard: an SMTP relay proxy that reads what receiving servers say and acts on it."""

__version__ = "0.1.0"
