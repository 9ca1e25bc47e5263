"""Paper-ready reporting from results.jsonl files: tables, plots and a self-contained HTML report.

Reads result files only, never models.
"""
