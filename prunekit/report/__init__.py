"""Run directories: report.json, report.md, plots."""
