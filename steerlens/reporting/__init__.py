"""Reporting: plotly figures (data in, ``go.Figure`` out) and the offline report page."""
