"""`python -m orchestrator`: the same as the `nero` command."""

from .cli import main

__all__ = ["main"]

main()
