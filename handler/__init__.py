"""keys-cleanup: measure and safely delete stale WhatsApp (Baileys) keys in PostgreSQL."""

__version__ = "0.1.0"
