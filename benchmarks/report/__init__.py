"""Renderers of the benchmark pages (see ``make_report.py``); not part of the measured code."""
