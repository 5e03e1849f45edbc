"""The run folder's ``status.json`` and the command that resumes a run.

Every training run keeps ``<run folder>/status.json`` up to date, so that a person or a script
can tell what happened to a run without reading its log:

* ``{"status": "running", "started": ..., "command": ...}`` when training starts;
* ``finished`` with ``metrics`` (the path of ``metrics.json``) and ``checkpoint`` at a normal
  end;
* ``failed`` with ``error`` (the exception's type and message on one line) when training raises;
* ``interrupted`` with ``signal``, ``checkpoint`` and ``resume_command`` after SIGTERM / SIGINT.

Fields of earlier writes are kept (``started``, ``command``, ``wandb_run_id``); ``updated`` is the
time of the last write. Files are replaced atomically (a temporary file and ``os.replace``) and
written by global rank 0 only.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

STATUS_FILE: str = "status.json"
#: The values of the ``status`` field.
STATUSES: tuple[str, ...] = ("running", "finished", "failed", "interrupted")


def is_global_rank_zero(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is global rank 0 by the launchers' variables (True when unset)."""
    environ = os.environ if environ is None else environ
    return all(int(environ.get(key, "0")) == 0 for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"))


def _now() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """The run folder's ``status.json`` as a dict, or ``{}`` when there is none (or unreadable)."""
    path = Path(run_dir) / STATUS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as file:
            json.dump(data, file, indent=2, sort_keys=True)
            file.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def update_status(run_dir: str | Path, status: str, **fields: Any) -> dict[str, Any] | None:
    """Set the run's status, keeping the fields of earlier writes; global rank 0 only.

    Args:
        run_dir: The run folder.
        status: One of :data:`STATUSES`.
        **fields: Further fields (None values are left out).

    Returns:
        What was written, or None on the other ranks.

    Raises:
        ValueError: On an unknown status.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    if not is_global_rank_zero():
        return None
    data = read_status(run_dir)
    if status == "running":
        data = {k: v for k, v in data.items() if k == "wandb_run_id"}
        data["started"] = _now()
    data.update({k: v for k, v in fields.items() if v is not None})
    data["status"] = status
    data["updated"] = _now()
    write_json_atomic(Path(run_dir) / STATUS_FILE, data)
    return data


def one_line_error(error: BaseException) -> str:
    """``Type: message`` on one line (the first line of a multi-line message, then ``...``)."""
    text = str(error).strip()
    lines = text.splitlines()
    first = lines[0] if lines else ""
    if len(lines) > 1:
        first += " ..."
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def original_overrides() -> list[str]:
    """The command-line overrides of this run: Hydra's task overrides, else ``sys.argv[1:]``."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):
        return list(sys.argv[1:])


def launch_command(overrides: Sequence[str] | None = None) -> str:
    """The command that started this run, quoted for a POSIX shell."""
    overrides = original_overrides() if overrides is None else overrides
    return shlex.join(["python", "-m", "gur_lightning.train", *overrides])


def resume_command(ckpt_path: str | Path, overrides: Sequence[str] | None = None) -> str:
    """The command that resumes this run from ``ckpt_path`` (any earlier ``ckpt_path`` replaced).

    Args:
        ckpt_path: The phase-end checkpoint (made absolute).
        overrides: The run's overrides (default :func:`original_overrides`).

    Returns:
        ``python -m gur_lightning.train <overrides> ckpt_path=<absolute path>``, shell-quoted.
    """
    overrides = original_overrides() if overrides is None else overrides
    kept = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != "ckpt_path"]
    return launch_command([*kept, f"ckpt_path={Path(ckpt_path).resolve()}"])
