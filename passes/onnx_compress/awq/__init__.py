"""AWQ: activation-aware weight scales searched on calibration data (see search.py)."""
