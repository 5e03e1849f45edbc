"""Loading checkpoints as data, never as code.

A ``.ckpt`` file is a pickle: loaded with ``torch.load(weights_only=False)``, a crafted file runs
whatever its ``__reduce__`` names (write files, start processes). Every checkpoint this package
reads goes through :func:`load_checkpoint`, which only accepts tensors and plain containers
(``weights_only=True``; our checkpoints hold nothing else) and turns every way a file can fail to
be one of our checkpoints into a single :class:`CheckpointError` sentence naming the file and
what was expected:

* a text file, random bytes, a truncated file: not a readable checkpoint;
* a pickle of other Python objects (classes, functions): refused without running anything;
* a readable file without the expected entries (e.g. a bare list, a state dict of another
  program).

:func:`check_resume_checkpoint` applies it to ``ckpt_path=`` before a training run resumes, so a
bad file fails the run before anything is built; Lightning then loads the same file again with
``weights_only=True`` as well.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from gur_lightning.utils.logging import get_logger

log = get_logger(__name__)

#: What a training checkpoint is, for error messages.
TRAINING_CHECKPOINT = "a checkpoint written by gur_lightning.train (checkpoints/last.ckpt)"
#: Entries every checkpoint written by Lightning for our module has.
TRAINING_KEYS: tuple[str, ...] = ("state_dict",)
#: Entries a checkpoint must have to resume training from it.
RESUME_KEYS: tuple[str, ...] = ("state_dict", "epoch", "global_step", "loops", "callbacks")
#: ``ckpt_path`` values Lightning resolves itself (not file paths).
LIGHTNING_CKPT_NAMES: frozenset[str] = frozenset({"last", "best", "hpc"})


class CheckpointError(ValueError):
    """A file is not a checkpoint of the expected kind; the message names it and the kind."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


#: First bytes of a zip archive, the container ``torch.save`` writes.
_ZIP_MAGIC = b"PK\x03\x04"


def _load_failure(exc: BaseException, starts_as_zip: bool) -> str:
    """A short reason for a failed ``torch.load(weights_only=True)``."""
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in text:
        # "... Unsupported global: GLOBAL io.open was not an allowed global by default ..."
        name = text.split("Unsupported global:", 1)[1].split("was not", 1)[0].strip()
        return (
            f"it holds Python objects, not only tensors and plain data ({name}); it was refused "
            "without running them"
        )
    if starts_as_zip or isinstance(exc, EOFError):
        # A torch archive whose central directory or records are cut off or overwritten.
        return (
            f"it is damaged or truncated (a torch archive that cannot be read: "
            f"{type(exc).__name__}: {text.strip().splitlines()[0][:120] if text.strip() else ''})"
        )
    # Text or random bytes: neither a zip archive nor a pickle. torch reports them with many
    # exception types (KeyError, IndexError, UnpicklingError with paragraphs of advice).
    detail = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
    detail_text = next((line.strip() for line in detail if line.strip()), "")[:120]
    return (
        "it is not a readable torch checkpoint, neither a zip archive nor a pickle of data "
        f"({type(exc).__name__}: {detail_text})"
    )


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    what: str = TRAINING_CHECKPOINT,
    required_keys: Sequence[str] = TRAINING_KEYS,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load a checkpoint as data (``weights_only=True``) and check its top-level entries.

    Args:
        path: The file.
        what: What the caller expects, for the error message (e.g. ``"ckpt=: a checkpoint
            written by gur_lightning.train"``).
        required_keys: Entries the loaded dictionary must have.
        map_location: Where tensors are loaded.

    Returns:
        The checkpoint dictionary.

    Raises:
        CheckpointNotFoundError: The file does not exist (also a ``FileNotFoundError``).
        CheckpointError: The file cannot be loaded as data, or lacks an expected entry; one
            sentence naming the path and ``what``.
    """
    spath = os.fspath(path)
    if not Path(spath).is_file():
        raise CheckpointNotFoundError(f"{spath!r} does not exist; expected {what}")
    try:
        with open(spath, "rb") as fh:
            starts_as_zip = fh.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
    except OSError as exc:
        raise CheckpointError(
            f"{spath!r} cannot be read ({exc.strerror}); expected {what}"
        ) from exc
    try:
        with warnings.catch_warnings():
            # A pickle protocol the safe unpickler rarely sees: it still refuses what it cannot
            # load, so the warning adds nothing to the error.
            warnings.filterwarnings("ignore", message=".*pickle protocol", category=UserWarning)
            obj = torch.load(spath, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load raises many types for non-checkpoint bytes
        raise CheckpointError(
            f"{spath!r} is not {what}: {_load_failure(exc, starts_as_zip)}"
        ) from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{spath!r} is not {what}: it holds a {type(obj).__name__}, not a dictionary of "
            "checkpoint entries"
        )
    missing = [key for key in required_keys if key not in obj]
    if missing:
        raise CheckpointError(
            f"{spath!r} is not {what}: it lacks the entries {missing} "
            f"(it has {sorted(map(str, obj))[:8]})"
        )
    return dict(obj)


def check_resume_checkpoint(ckpt_path: str | os.PathLike[str] | None) -> None:
    """Refuse a training resume from a file that is not one of our checkpoints.

    Called before anything is built, so that a text file, a truncated checkpoint or a crafted
    pickle fails the run at once (and runs nothing). Lightning's own names (``last``,
    ``best``, ``hpc``) are left to Lightning.

    Args:
        ckpt_path: The run's ``ckpt_path`` (``None``: a fresh run).

    Raises:
        CheckpointError: See :func:`load_checkpoint`.
    """
    if ckpt_path is None or os.fspath(ckpt_path) in LIGHTNING_CKPT_NAMES:
        return
    load_checkpoint(
        ckpt_path,
        what=f"ckpt_path: {TRAINING_CHECKPOINT} to resume from",
        required_keys=RESUME_KEYS,
    )


def check_state_dict_fits(
    weights: Mapping[str, torch.Tensor],
    model: Mapping[str, torch.Tensor],
    *,
    path: str,
    hint: str,
) -> None:
    """Refuse weights whose names or shapes differ from a model's state dict.

    Args:
        weights: The checkpoint's weights.
        model: The configured model's ``state_dict()`` (same key filter as ``weights``).
        path: The checkpoint file, for the message.
        hint: Which settings to check, for the message (e.g. ``"model.backbone.depth=18"``).

    Raises:
        CheckpointError: Naming the first differing shape and the missing / unexpected keys.
    """
    shapes = [
        f"{key!r} is {list(w.shape)} in the file but {list(model[key].shape)} in the model"
        for key, w in weights.items()
        if key in model and tuple(w.shape) != tuple(model[key].shape)
    ]
    missing = [key for key in model if key not in weights]
    unexpected = [key for key in weights if key not in model]
    if not (shapes or missing or unexpected):
        return
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} shapes differ (first: {shapes[0]})")
    if missing:
        parts.append(f"{len(missing)} model weights are missing (first: {missing[:3]})")
    if unexpected:
        parts.append(f"{len(unexpected)} are unexpected (first: {unexpected[:3]})")
    raise CheckpointError(
        f"{path!r} holds the weights of another network than the configured one ({hint}): "
        + "; ".join(parts)
    )
