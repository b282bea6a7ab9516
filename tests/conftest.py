"""Shared helpers: compose configs like train.py does, run training in-process or as a CLI."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from framework.config import register_configs
from framework.registry import CONF_DIR

ROOT = CONF_DIR.parent
#: Small, fast settings for runs in tests: a tiny timm ResNet on small synthetic images.
TINY = [
    "dataset=synthetic",
    "dataset.img_size=16",
    "dataset.train_size=256",
    "dataset.val_size=64",
    "model.name=test_resnet",
    "trainer.progress_bar=false",
]

register_configs()


def compose_cfg(*overrides: str):
    """The config ``python train.py <overrides>`` would get."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def train_in_process(run_dir: Path, *overrides: str) -> float:
    """Run ``framework.run.train`` on the composed config, writing into ``run_dir``."""
    from framework.run import train

    return train(compose_cfg(*overrides), run_dir=run_dir)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_cli(args: list[str], run_dir: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python train.py <args>`` in a subprocess from the project root."""
    extra = [f"hydra.run.dir={run_dir}"] if run_dir is not None else []
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args, *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def compose_fn():
    return compose_cfg
