"""`autocompress report RUN_DIR`: a search's results as a markdown table, PNG figures and one HTML page."""

from autocompress.report.build import ReportFiles, write_report

__all__ = ["ReportFiles", "write_report"]
