"""Benchmarks: ``python -m gur_lightning.bench NAME [options]``; ``make bench`` runs them all.

Each benchmark is a module of this package exposing ``main(argv) -> dict`` (it parses its own
options, prints one JSON line and returns the same record) and ``DEFAULT_ARGS`` (the argument
list ``make bench`` uses for the figures quoted in the README).
"""

BENCHMARKS: tuple[str, ...] = ("pseudo_labels", "metrics", "training", "replicas", "data")
