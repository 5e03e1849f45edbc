"""Library logging: every module logs through here, never with ``print``."""

from __future__ import annotations

import logging


def get_logger(name: str) -> logging.Logger:
    """Return the package logger for ``name`` (a module's ``__name__``).

    Args:
        name: Dotted module name.

    Returns:
        A standard :class:`logging.Logger`; handlers are configured by the entry points
        (Hydra's job logging or the CLI), not by the library.
    """
    return logging.getLogger(name)
