"""Packaging: the wheel carries the Hydra configs and its commands run outside a clone.

The fast tests check that every file under ``src/gur_lightning/conf`` is package data (by the
patterns of pyproject.toml and in a built wheel) and that a user's own config directory is
picked up (``--config-dir`` and ``hydra.searchpath``). The slow test installs the wheel into a
fresh virtual environment and trains and evaluates the smoke experiment from a directory
outside the repository, with ``gur-train``, ``python -m gur_lightning.train`` and
``gur-evaluate``.
"""

from __future__ import annotations

import glob
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

import gur_lightning
from gur_lightning.config import register_configs
from gur_lightning.train import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "gur_lightning"
#: A user's experiment, outside the package, built on the packaged smoke experiment.
USER_EXPERIMENT = """\
# @package _global_
defaults:
  - smoke
experiment: mine
seed: 4321
"""


def _source_configs() -> set[str]:
    """Every file under the source tree's ``conf/``, relative to the package."""
    conf = PACKAGE / "conf"
    return {
        p.relative_to(PACKAGE).as_posix()
        for p in conf.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def _torch_pins() -> list[str]:
    """The CPU dev/CI torch pins of the Makefile (``TORCH_PINS ?= ...``)."""
    match = re.search(r"^TORCH_PINS \?= (.+)$", (REPO / "Makefile").read_text(), re.M)
    assert match, "TORCH_PINS not found in the Makefile"
    return match.group(1).split()


def _user_config_dir(root: Path) -> Path:
    """A config directory holding ``experiment/mine.yaml``."""
    (root / "experiment").mkdir(parents=True)
    (root / "experiment" / "mine.yaml").write_text(USER_EXPERIMENT)
    return root


def _clean_env() -> dict[str, str]:
    """The environment without anything that points Python at the repository."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("PROJECT_ROOT", None)
    return env


def build_wheel(out: Path) -> Path:
    """Build the project's wheel from a clean copy of its sources (no stale ``build/``)."""
    tree = out / "tree"
    tree.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, tree / name)
    shutil.copytree(
        REPO / "src",
        tree / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"),
    )
    dist = out / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    proc = subprocess.run(
        [*cmd, "-w", str(dist), str(tree)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = dist.glob("gur_lightning-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Building needs a setuptools that reads pyproject.toml's SPDX `license` string.
    pytest.importorskip("setuptools", minversion="77")
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_conf_dir_is_the_packaged_one():
    assert Path(CONF_DIR) == Path(gur_lightning.__file__).resolve().parent / "conf"
    packaged = importlib.resources.files("gur_lightning") / "conf"
    assert (packaged / "train.yaml").is_file()
    assert (packaged / "eval.yaml").is_file()
    assert (packaged / "experiment" / "smoke.yaml").is_file()


def test_package_data_patterns_cover_every_config():
    configs = _source_configs()
    assert "conf/train.yaml" in configs and "conf/hydra/launcher/submitit_slurm.yaml" in configs
    assert all(c.endswith(".yaml") for c in configs), sorted(configs)
    # tomllib is 3.11+; the project supports 3.10, where tomli reads the file.
    toml = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    meta = toml.loads((REPO / "pyproject.toml").read_text())
    patterns = meta["tool"]["setuptools"]["package-data"]["gur_lightning"]
    # How setuptools expands package-data patterns (glob, `**` recursive).
    matched = {
        Path(p).relative_to(PACKAGE).as_posix()
        for pattern in patterns
        for p in glob.glob(str(PACKAGE / pattern), recursive=True)
    }
    assert configs <= matched, sorted(configs - matched)


def test_wheel_holds_every_config_and_both_commands(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = zf.read(entry_points).decode()
    packaged = {n.removeprefix("gur_lightning/") for n in names if n.startswith("gur_lightning/")}
    missing = _source_configs() - packaged
    assert not missing, sorted(missing)
    assert "gur-train = gur_lightning.train:cli" in scripts
    assert "gur-evaluate = gur_lightning.evaluate:main" in scripts


def test_searchpath_override_adds_a_user_experiment(tmp_path):
    user = _user_config_dir(tmp_path / "my_conf")
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra.searchpath=[file://{user}]", "+experiment=mine"])
    assert cfg.experiment == "mine"
    assert cfg.seed == 4321
    assert cfg.schedule.name == "smoke"


def test_config_dir_on_the_command_line_adds_a_user_experiment(tmp_path):
    user = _user_config_dir(tmp_path / "my_conf")
    env = _clean_env()
    env["PYTHONPATH"] = str(PACKAGE.parent)
    cmd = [sys.executable, "-m", "gur_lightning.train", "--config-dir", str(user)]
    proc = subprocess.run(
        [*cmd, "+experiment=mine", "--cfg", "job"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = yaml.safe_load(proc.stdout)
    assert (cfg["experiment"], cfg["seed"], cfg["schedule"]["name"]) == ("mine", 4321, "smoke")


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.slow
def test_installed_wheel_trains_and_evaluates_outside_the_repository(wheel, tmp_path):
    """Fresh venv, pinned CPU torch, the wheel and its dependencies; no repository on the path."""
    start = time.perf_counter()
    venv = tmp_path / "venv"
    work = tmp_path / "work"
    work.mkdir()
    assert REPO not in work.resolve().parents
    env = _clean_env()
    bin_dir = venv / "bin"
    py = str(bin_dir / "python")
    try:
        _run([sys.executable, "-m", "venv", str(venv)], work, env)
        pins = _torch_pins()
        _run([py, "-m", "pip", "install", "--quiet", *pins], work, env)
        _run([py, "-m", "pip", "install", "--quiet", str(wheel), *pins], work, env)
        installed = time.perf_counter()

        # The package is the venv's copy, not the repository's sources.
        where = _run([py, "-c", "import gur_lightning; print(gur_lightning.__file__)"], work, env)
        location = Path(where.stdout.strip()).resolve()
        assert venv.resolve() in location.parents, location
        assert REPO not in location.parents, location

        data = f"paths.data_dir={work / 'data'}"
        smoke = ["+experiment=smoke", "eval.max_trials=1"]
        runs = {
            "gur-train": [str(bin_dir / "gur-train"), *smoke, data],
            "gur-evaluate": [str(bin_dir / "gur-evaluate"), *smoke, data, "features=raw_pixels"],
        }
        for name, cmd in runs.items():
            _run([*cmd, f"hydra.run.dir={work / name}"], work, env)
            metrics = json.loads((work / name / "metrics.json").read_text())
            assert "test/sysu_all/mAP" in metrics, (name, sorted(metrics))
        # With no paths overridden, data/ and logs/ land under the current directory.
        module = work / "module"
        module.mkdir()
        _run([py, "-m", "gur_lightning.train", *smoke], module, env)
        assert any((module / "data").iterdir())
        (run,) = (module / "logs" / "train" / "runs").iterdir()
        assert "test/sysu_all/mAP" in json.loads((run / "metrics.json").read_text())
        assert not (location.parent / "logs").exists()

        user = _user_config_dir(work / "my_conf")
        cmd = [str(bin_dir / "gur-train"), "--config-dir", str(user), "+experiment=mine"]
        cfg = yaml.safe_load(_run([*cmd, "--cfg", "job"], work, env).stdout)
        assert (cfg["experiment"], cfg["seed"]) == ("mine", 4321)
    finally:
        # The venv holds a full torch install (gigabytes): never leave it in the temp dirs.
        shutil.rmtree(venv, ignore_errors=True)
    end = time.perf_counter()
    sys.stderr.write(
        f"packaging: install {installed - start:.0f} s, runs {end - installed:.0f} s\n"
    )
