"""``python -m pellucid``: the same as the ``pellucid`` command."""

from pellucid.cli.main import entry

entry()
