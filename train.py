"""Train a timm model with a declarative LR policy: ``python train.py scheduler=cosine lr0=0.01``.

Hydra composes ``conf/train.yaml``; ``framework.run.train`` does the rest and returns the
objective (best validation accuracy) so Hydra sweepers can optimise it.
"""
import hydra
from omegaconf import DictConfig

from framework.config import register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from framework.cli import run_task  # imports torch lazily: --help and --cfg stay fast

    return run_task(cfg)


if __name__ == "__main__":
    from framework.cli import run_cli

    run_cli(main)
