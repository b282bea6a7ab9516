"""The Hydra application behind ``lrframe`` and ``python train.py``: the packaged configs
(``framework/conf/train.yaml``), layered under the user's own config folder (``--config-dir`` or
``hydra.searchpath``), and the one function it calls.

Importing this module imports Hydra; the ``lrframe`` command (:mod:`framework.__main__`) first
sets up the signal handling, then imports it.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from framework.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Train (or run the ``mode`` asked for) and return the objective for Hydra sweepers."""
    from framework.cli import run_task  # imports torch lazily: --help and --cfg stay fast

    return run_task(cfg)
