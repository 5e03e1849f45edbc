"""Evaluation protocols and metrics (issue 3)."""
