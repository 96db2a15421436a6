"""Orchestration: settings to a finished run directory (``runner``), sweeps of runs, and sweeps on Ray."""
