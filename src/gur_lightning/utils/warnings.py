"""Silence the known, harmless third-party messages of every run, each by its exact text.

A training run used to print a deprecation warning per phase from Lightning's pytree helper and
Lightning's advertisement for its cloud logger; both say nothing about the run. They are filtered
here, in one place, by their exact message and origin, so that any other warning (a new
deprecation, one of ours) still reaches the user. The other noise of a run was removed at its
source: faiss is imported only when it is used, the validation checkpoint states what it saves,
and the data set's image counts are logged once.
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["KNOWN_LOG_NOISE", "KnownNoiseFilter", "quiet_known_noise"]

#: Lightning's pytree helper still builds ``LeafSpec`` objects, deprecated by torch (a
#: ``FutureWarning`` per ``training_step`` output structure, i.e. once per phase).
_PYTREE_LEAFSPEC_MESSAGE = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
_PYTREE_MODULE = r"lightning\.pytorch\.utilities\._pytree"

#: Logger name -> the start of an INFO message it logs that carries no information about the run.
KNOWN_LOG_NOISE: dict[str, tuple[str, ...]] = {
    # Lightning's advertisement for its cloud logger, logged by every Trainer.
    "lightning.pytorch.utilities.rank_zero": (
        "\N{ELECTRIC LIGHT BULB} Tip: For seamless cloud logging and experiment tracking",
    ),
}


class KnownNoiseFilter(logging.Filter):
    """Drops the records of one logger whose message starts with one of the known texts."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        """False (drop) for a known message, True for every other record."""
        return not record.getMessage().startswith(self.prefixes)


def quiet_known_noise() -> None:
    """Install the filters (idempotent). Called by the ``main`` of training and evaluation."""
    warnings.filterwarnings(
        "ignore",
        message=_PYTREE_LEAFSPEC_MESSAGE,
        category=FutureWarning,
        module=_PYTREE_MODULE,
    )
    for name, prefixes in KNOWN_LOG_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, KnownNoiseFilter) for f in logger.filters):
            logger.addFilter(KnownNoiseFilter(prefixes))
