"""Self-contained HTML reports."""

from pellucid.report.html import Section, environment, write_report

__all__ = ["Section", "environment", "write_report"]
