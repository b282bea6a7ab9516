"""Train a timm model with a declarative LR policy: ``python train.py scheduler=cosine lr0=0.01``.

Hydra composes ``conf/train.yaml``; ``framework.run.train`` does the rest and returns the
objective (best validation accuracy) so Hydra sweepers can optimise it.
"""
from framework import interrupts

if __name__ == "__main__":  # first: SIGTERM / Ctrl-C during start-up end in one line, never a traceback
    interrupts.install()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from framework.config import register_configs  # noqa: E402

register_configs()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from framework.cli import run_task  # imports torch lazily: --help and --cfg stay fast

    return run_task(cfg)


if __name__ == "__main__":
    from framework.cli import run_cli

    run_cli(main)
