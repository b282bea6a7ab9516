"""Composing configs as ``train.py`` does, building and running them in this process or as a CLI,
and reading what a run wrote."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from framework.config import register_configs
from framework.registry import CONF_DIR

ROOT = CONF_DIR.parent.parent  # the checkout (train.py, framework/)
#: The smallest run (``conf/debug/tiny.yaml``: a tiny timm ResNet on small synthetic images).
TINY = ["+debug=tiny"]

register_configs()


def compose_cfg(*overrides: str):
    """The config ``python train.py <overrides>`` would get."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def build_run(run_dir: Path, *overrides: str):
    """The :class:`~framework.build.Built` run of ``python train.py <overrides>`` (validated
    and built as training does; nothing trained)."""
    from framework.build import build
    from framework.config import validate

    return build(validate(compose_cfg(*overrides)), run_dir)


def train_in_process(run_dir: Path, *overrides: str) -> float:
    """Run ``framework.run.train`` on the composed config, writing into ``run_dir``."""
    from framework.run import train

    return train(compose_cfg(*overrides), run_dir=run_dir)


def lines(text: str) -> list[str]:
    """The non-blank lines of what a program printed."""
    return [line for line in text.splitlines() if line.strip()]


def folder_bytes(folder: Path) -> dict[Path, bytes]:
    """Every file under ``folder`` with its bytes: compare before and after to see nothing changed."""
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


class FullDisk:
    """A binary or text file on a disk with ``room`` bytes left: writes past it fail with
    ``ENOSPC``, as on a full disk (a write to an open file names no file)."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data):
        import errno

        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


#: Seconds after which a subprocess of a test counts as hung: a guard against a hang, far above
#: any run's time on a loaded machine (no test result depends on how long something takes).
HANG_GUARD_S = 3600


def run_cli(args: list[str], run_dir: Path | None = None, timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess:
    """``python train.py <args>`` in a subprocess from the project root."""
    extra = [f"hydra.run.dir={run_dir}"] if run_dir is not None else []
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args, *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )


def run_cli_in_process(args: list[str], run_dir: Path | None, cwd: Path = ROOT) -> int:
    """``python train.py <args>`` in this process (as ``train.py``'s ``__main__`` does): the
    exit status; what it prints is left to pytest's ``capfd``. ``run_dir`` None: ``args`` say
    where (or Hydra's default folder, under ``cwd``, the folder it runs in)."""
    import os
    import runpy

    import signal

    from hydra.core.global_hydra import GlobalHydra

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}  # train.py sets its own
    argv, old_cwd = sys.argv, os.getcwd()
    sys.argv = [str(ROOT / "train.py"), *args, *([f"hydra.run.dir={run_dir}"] if run_dir is not None else [])]
    GlobalHydra.instance().clear()
    try:
        os.chdir(cwd)
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
        os.chdir(old_cwd)
        GlobalHydra.instance().clear()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
