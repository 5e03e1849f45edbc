"""Lightning callbacks (re-clustering orchestration)."""
