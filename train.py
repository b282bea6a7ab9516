"""Train a timm model with a declarative LR policy: ``python train.py scheduler=cosine lr0=0.01``.

The same command as ``lrframe`` (installed with the package): Hydra composes
``framework/conf/train.yaml``; ``framework.run.train`` does the rest and returns the objective
(the task's monitored metric) so Hydra sweepers can optimise it.
"""
from framework import interrupts

if __name__ == "__main__":  # first: SIGTERM / Ctrl-C during start-up end in one line, never a traceback
    interrupts.install()

from framework.app import main  # noqa: E402  (the Hydra main; imports Hydra)

if __name__ == "__main__":
    from framework.cli import run_cli

    run_cli(main)
