"""Pseudo-label engine (issue 7): filled in by the clustering modules."""
