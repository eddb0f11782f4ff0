"""Self-contained HTML reports."""

from pellucid.report.html import Figure, Section, Stat, environment, write_report

__all__ = ["Figure", "Section", "Stat", "environment", "write_report"]
