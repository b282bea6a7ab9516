"""Continue an interrupted ``python -m framework.tune`` run: ``tune.resume=<tune folder>``.

The tune folder's ``multirun.yaml`` holds the command line it ran (``tune.argv``); the search is
that command again, in the same folder, through Ray's ``Tuner.restore`` on ``<folder>/ray``:
trials that ended (completed, pruned, diverged) stay as they are, unfinished ones continue and
the trials not started yet start. An unfinished ASHA trial continues from its own
``checkpoints/last.pt``, so its ``steps.csv`` goes on from the step it had reached; a PBT or
HyperBand trial for which Ray holds a checkpoint (taken at a pause or a perturbation) continues
from Ray's latest one, and the epochs it trained after that are trained again.

Ray does not save a scheduler's state with the experiment. ASHA's is rebuilt here: the rewards
recorded at each rung are replayed, in the order the scheduler judged them, from the folder's
``results.jsonl`` (:func:`seed_asha`), so the resumed search judges its trials against every
result judged before. A result in flight at the interruption (an epoch the run finished but Tune
had not judged) is lost: that trial is judged at its next epoch, against the rung it passed.
HyperBand and PBT restart their bookkeeping from the trials' next results (Ray's own behaviour).

Source: Ray Tune 2.x ``Tuner.restore`` / ``Tuner.can_restore``; ``ray.tune.schedulers.
async_hyperband._Bracket.on_result`` (what records a reward at a rung).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Optional

from framework.errors import ConfigError

__all__ = ["fit_watching_sigint", "resumed_command", "seed_asha", "restore"]

#: Keys a resume may give besides ``tune.resume``: where the Ray cluster is now.
RESUME_KEYS = ("tune.resume", "tune.address")


def resumed_command(argv: list[str], folder: Any) -> tuple[list[str], str]:
    """The recorded command line of the tune folder ``folder``, with ``tune.dir`` and
    ``tune.resume`` set to it and ``tune.address`` as given now (else as recorded), and the
    folder it ran in (``tune.cwd``; this one when that is gone).

    Args:
        argv: this command line (``tune.resume=<folder>``, optionally ``tune.address=...``).
        folder: the tune folder (``tune.resume``'s value).

    Raises:
        ConfigError: another key given with ``tune.resume``; no such folder, a run folder, not a
            tune folder (no ``multirun.yaml`` with ``tune.argv``, or no Ray state in ``ray/``); a Ray
            Client address (``ray://``); each in one line.
    """
    from omegaconf import OmegaConf

    shown = f"tune.resume={folder}"
    extra = [a for a in argv if a.lstrip("+~").partition("=")[0] not in RESUME_KEYS]
    if extra:
        raise ConfigError(f"{shown}: continues the recorded search as it was; drop {' '.join(extra)} (a new "
                          "search in a new tune.dir can change them)")
    path = Path(str(folder)).expanduser().resolve()
    record = path / "multirun.yaml"
    if not path.is_dir():
        raise ConfigError(f"{shown}: no such folder; give the tune folder a python -m framework.tune run printed "
                          "(tune: ... folder <tune folder>)")
    if (path / "steps.csv").is_file() or (path / "summary.json").is_file():
        raise ConfigError(f"{shown}: a run folder, not a tune folder; continue one run with lrframe <its overrides> "
                          f"resume={path}")
    if not record.is_file():
        raise ConfigError(f"{shown}: no multirun.yaml there; give the folder a python -m framework.tune run printed "
                          "(tune: ... folder <tune folder>)")
    try:
        node = OmegaConf.load(record)
    except Exception as exc:  # a YAML error, a file cut short
        raise ConfigError(f"{shown}: its multirun.yaml cannot be read ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); restore it, or run the search again") from None
    recorded = OmegaConf.select(node, "tune.argv", default=None)
    if recorded is None:
        raise ConfigError(f"{shown}: its multirun.yaml does not hold the command line (tune.argv): not a "
                          "python -m framework.tune folder, or one written by an earlier version; run the search again")
    address = [a for a in argv if a.startswith("tune.address=")]
    for given in address or [a for a in recorded if a.startswith("tune.address=")]:
        if given.split("=", 1)[1].strip().strip("'\"").startswith("ray://"):
            raise ConfigError(f"{shown}: a search cannot be resumed through Ray Client ({given}); run the command on "
                              "the head node with tune.address=auto")
    from ray import tune

    if not tune.Tuner.can_restore(str(path / "ray")):
        raise ConfigError(f"{shown}: Ray's state (ray/tuner.pkl) is not there: the search ended before its first "
                          "trial; run the search again")
    kept = [a for a in recorded if not a.lstrip("+~").startswith(("tune.dir=", "tune.resume=", "tune.address="))]
    recorded_address = [a for a in recorded if a.startswith("tune.address=")]
    cwd = str(OmegaConf.select(node, "tune.cwd", default=None) or ".")
    if not Path(cwd).is_dir():
        import logging

        logging.getLogger(__name__).warning("tune.resume: the folder the search ran in (%s) is gone; trials run in %s, "
                                            "where its relative paths now resolve", cwd, Path.cwd())
        cwd = str(Path.cwd())
    return [*kept, *(address or recorded_address), f"tune.dir={path}", f"tune.resume={path}"], cwd


class _Seen:
    """What ``_Bracket.on_result`` reads of a trial: its id."""

    def __init__(self, trial_id: str):
        self.trial_id = trial_id


def seed_asha(scheduler: Any, results: Path, monitor: str, mode: str, time_attr: str) -> int:
    """Record in ASHA's rungs the rewards of an earlier part of the search: every row of
    ``results.jsonl`` (``trial_id``, ``time_attr``, ``monitor``), in the file's order, through
    the bracket's own ``on_result`` (its decisions are dropped: they were taken then).

    Args:
        scheduler: Ray's ``AsyncHyperBandScheduler`` (fresh: its rungs empty).
        results: the tune folder's ``results.jsonl``.
        monitor, mode: the task's monitored metric and ``max`` | ``min`` (a ``min`` metric is
            negated, as Ray's scheduler does).
        time_attr: the scheduler's time attribute (``epochs_trained``).

    Returns:
        The number of rows replayed (0 when the file is missing).
    """
    from framework.search.ray_trial import result_rows

    sign = 1.0 if mode == "max" else -1.0
    max_t = getattr(scheduler, "_max_t", math.inf)  # a result at max_t ends the trial: Ray records none
    bracket = scheduler._brackets[0]  # one bracket (brackets=1): every trial's
    count = 0
    for row in result_rows(results):
        if "trial_id" in row and isinstance(row.get(monitor), (int, float)) and row.get(time_attr, max_t) < max_t:
            bracket.on_result(_Seen(row["trial_id"]), row[time_attr], sign * float(row[monitor]))
            count += 1
    return count


def restore(tune_dir: Path, trainable: Any, param_space: dict[str, Any], scheduler: Any, callbacks: list[Any],
            search: str, monitor: str, mode: str) -> Any:
    """Ray's ``Tuner`` of the interrupted search in ``tune_dir`` (``Tuner.restore`` on
    ``<tune_dir>/ray``: unfinished trials continued, errored ones left as they ended), with
    ``scheduler`` and ``callbacks`` in place of the pickled ones (the scheduler's state is not in
    Ray's record; ``results.jsonl`` is written where the folder is now); for ``search`` ``asha``
    the scheduler's rungs refilled first (:func:`seed_asha`, or ASHA with promotions' own
    ``seed``).

    Raises:
        ConfigError: a Ray Client driver (``tune.address=ray://...``), whose Tuner runs on the
            cluster where its scheduler cannot be replaced.
    """
    import sys

    from ray import tune

    from framework.search.ray_trial import TIME_ATTR

    from framework.search.ray_promotion import RayPromotionASHA

    if isinstance(scheduler, RayPromotionASHA):  # tune.asha_rule=promotion
        scheduler.set_search_properties(monitor, mode)
        count = scheduler.seed(tune_dir / "results.jsonl")
    else:
        count = seed_asha(scheduler, tune_dir / "results.jsonl", monitor, mode, TIME_ATTR) if search == "asha" else 0
    tuner = tune.Tuner.restore(str(tune_dir / "ray"), trainable, resume_unfinished=True, param_space=param_space)
    inner: Optional[Any] = getattr(tuner, "_local_tuner", None)
    if inner is None:  # a Ray Client driver, or a Ray whose Tuner keeps no local driver: nothing to refill
        raise ConfigError(f"tune.resume={tune_dir}: this Ray's Tuner has no local driver here (Ray Client, or another "
                          "Ray version), so ASHA's state cannot be restored; run the command on the head node with "
                          "tune.address=auto")
    inner._tune_config.scheduler = scheduler
    inner._run_config.callbacks = callbacks
    if search == "asha":
        print(f"tune: ASHA's rungs refilled with the {count} results judged before the interruption", file=sys.stderr)
    return tuner


def fit_watching_sigint(tuner: Any) -> tuple[Any, bool]:
    """``tuner.fit()`` and whether a Ctrl-C (SIGINT) ended it early.

    Tune's ``fit`` installs its own SIGINT handler, which on the first Ctrl-C stops the search
    gracefully and puts back the handler it found: the one installed here. So after ``fit`` this
    handler is in place again only if Tune took a Ctrl-C (``ray.tune.tune._setup_signal_catching``);
    with ``TUNE_DISABLE_SIGINT_HANDLER=1`` a Ctrl-C reaches this handler itself (then a
    ``KeyboardInterrupt``, as Python's own). Trials a scheduler stopped without a Ctrl-C (HyperBand
    ends the paused trials its bracket does not continue) are then not taken for interrupted ones.
    Through Ray Client (``tune.address=ray://...``) Tune runs the search on the cluster and installs
    no handler here: only a Ctrl-C that reached this handler counts."""
    import os
    import signal

    seen = {"sigint": False}

    def on_sigint(signum: int, frame: Any) -> None:
        seen["sigint"] = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        results = tuner.fit()
    finally:
        current = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, previous)
    ray = sys.modules.get("ray")  # not imported: no Ray Client connection either
    remote = ray is not None and ray.util.client.ray.is_connected()
    tune_catches = not int(os.getenv("TUNE_DISABLE_SIGINT_HANDLER", "0")) and not remote
    return results, seen["sigint"] or (tune_catches and current is on_sigint)

