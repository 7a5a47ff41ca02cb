"""Run reports: PNG plots and a self-contained report.html."""

from .html import write_report

__all__ = ["write_report"]
