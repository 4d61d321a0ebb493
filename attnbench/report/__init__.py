"""Paper-style tables, figures and the published-claims audit, from rows.jsonl alone."""
from attnbench.report.build import ReportResult, build_report
from attnbench.report.load import ReportError, latest_run

__all__ = ["ReportError", "ReportResult", "build_report", "latest_run"]
