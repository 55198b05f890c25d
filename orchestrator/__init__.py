"""nero: spreadsheet-driven experiment orchestrator."""

__version__ = "0.1.0"
