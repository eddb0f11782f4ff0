"""The ``pellucid`` command: one entry point, one module per subcommand."""

from pellucid.cli.main import main

__all__ = ["main"]
