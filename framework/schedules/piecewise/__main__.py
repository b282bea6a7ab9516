"""``python -m framework.schedules.piecewise RUN_FOLDER [-o best_schedule.yaml]``: export a run's
LR trace as a schedule file that ``python train.py scheduler=piecewise scheduler.path=<file>`` replays."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from framework.schedules.piecewise.export import export_schedule, read_steps, recorded, replay_command


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m framework.schedules.piecewise RUN_FOLDER [-o best_schedule.yaml]``: export the
    run's LR trace as a schedule file (:func:`export_schedule`) and print the command that
    replays it. A mistake (no steps.csv, gaps) is one ``error:`` line and exit status 2."""
    import argparse

    from framework.errors import exit_on_user_error

    parser = argparse.ArgumentParser(prog="python -m framework.schedules.piecewise",
                                     description="Export a run's LR trace (steps.csv) as a schedule file that "
                                                 "python train.py scheduler=piecewise scheduler.path=<file> replays.")
    parser.add_argument("run", help="run folder (holds steps.csv), e.g. outputs/runs/<date>/<time>")
    parser.add_argument("-o", "--out", default="schedule.yaml", help="YAML file to write (default: %(default)s)")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        out = export_schedule(args.run, args.out)
    steps = len(read_steps(Path(args.run))[0])
    summary, config = recorded(Path(args.run))
    print(f"wrote {out}: the LR of {steps} optimizer steps of {args.run}")
    print(f"replay: {replay_command(summary, config, out)}")


if __name__ == "__main__":
    main()
