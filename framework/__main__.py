"""``lrframe`` (and ``python -m framework``): the training command, from any folder.

Takes the same overrides as ``python train.py`` in the checkout; writes ``outputs/`` in the
current folder; modules of the current folder are importable (``model._target_=mynets.build``),
as with ``python -m``.
"""
from framework import interrupts


def cli() -> None:
    """Entry point of the ``lrframe`` console script."""
    interrupts.install()  # first: SIGTERM / Ctrl-C during start-up end in one line, never a traceback
    from framework.app import main
    from framework.cli import run_cli

    run_cli(main)


if __name__ == "__main__":
    cli()
