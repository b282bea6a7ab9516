"""``python -m framework.tune``: search the LR with Ray Tune, on this machine or a Ray cluster.

    python -m framework.tune 'lr0=tag(log, interval(1e-4, 1))' epochs=10 tune.search=asha tune.num_samples=16
    python -m framework.tune epochs=20 tune.search=pbt tune.num_samples=4 tune.perturbation_interval=2
    python -m framework.tune ... tune.address=auto          # a running cluster (ray start --head / ray up)
    python -m framework.tune tune.resume=<tune folder>      # the rest of an interrupted search

The command line is ``lrframe``'s (``--config-dir <dir>`` too): keys swept in Hydra's syntax
(``tag(log, interval(a, b))``, ``interval(a, b)``, ``choice(a, b)``, ``a,b,c``, ``range(...)``, or
``tune.params.<key>=<sweep>``) make the search space (:func:`framework.search.space.parse_space`,
turned into Ray's distributions by :func:`ray_domain`; none given: ``lr0`` log-uniform on
``[1e-4, 1]``), other keys are every trial's, ``tune.<key>=<value>`` set the search
(:data:`OPTIONS`). Each trial is one training run in a Ray worker
(:class:`~framework.search.ray_trainable.LRTrainable`), in ``<tune folder>/<trial index>/`` (a
run folder, with ``.hydra/``); Ray's own records go to ``<tune folder>/ray/``, the results in the
order the scheduler saw them to ``results.jsonl``; the sweep report (``report.md``) is written at
the end. Trials a scheduler stopped end with ``status: pruned``. After PBT, the best trial's
applied LR trace is ``best_schedule.yaml``, replayed by ``lrframe scheduler=piecewise``.

Source: Ray Tune 2.x (``Tuner``, ``ASHAScheduler``, ``HyperBandScheduler``,
``PopulationBasedTraining``); Li et al. 2020, "A System for Massively Parallel Hyperparameter
Tuning" (ASHA); Jaderberg et al. 2017, "Population Based Training of Neural Networks".
"""
from __future__ import annotations

import datetime
import logging
import os
import random
import sys
from pathlib import Path
from typing import Any, Optional

from framework.errors import ConfigError, exit_on_user_error, first_line
from framework.search.ray_args import OPTIONS, SEARCHES, parse_args
from framework.search.space import ray_domain

log = logging.getLogger(__name__)

__all__ = ["OPTIONS", "SEARCHES", "parse_args", "ray_domain", "task_objective", "main"]

#: The default search space: lr0 log-uniform on [1e-4, 1].
DEFAULT_SPACE = {"lr0": "tag(log, interval(1e-4, 1))"}
#: Optimizer keys PBT perturbs besides lr0 (when the optimizer has them, > 0), and the range it
#: resamples them from when the space does not give one.
PERTURBED = ("optimizer.momentum", "optimizer.weight_decay")


def task_objective(cfg: Any) -> tuple[str, str]:
    """``(monitor, mode)`` of the config's task: ``task.monitor`` (else its ``_target_``'s default,
    else ``val/loss``) and :func:`framework.config.task_mode`."""
    from framework import registry
    from framework.config import task_mode

    node = cfg.get("task")
    monitor = node.get("monitor") if node is not None else None
    if monitor is None and node is not None and node.get("_target_"):
        target = registry.locate(node.get("_target_"), "task")
        monitor = registry.default_of(target, "monitor", getattr(target, "monitor", "val/loss"))
    return str(monitor or "val/loss"), task_mode(node)


def _samples(space: Any) -> list[dict[str, Any]]:
    """Points that cover what a trial may compose: every listed value of each categorical key
    (the others at their lowest value), at most 20."""
    from optuna.distributions import CategoricalDistribution

    low = {k: (d.choices[0] if isinstance(d, CategoricalDistribution) else d.low)
           for k, d in space.distributions.items()}
    points = [low]
    for key, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            points += [{**low, key: choice} for choice in dist.choices[1:]]
    return points[:20]


def _checked_space(opts: dict[str, Any], train_args: list[str], config_dir: Optional[str]) -> tuple[Any, Any, int]:
    """The search space, the base config (validated with each point of :func:`_samples`) and the
    longest run's epochs (the schedulers' ``max_t``).

    Raises:
        ConfigError: a bad sweep, a config a trial would refuse, nothing to search, a grace
            period beyond the run, promotions without checkpoints.
    """
    from framework.config import validate
    from framework.search.ray_trainable import TrialSpec, compose_config, trial_overrides
    from framework.search.space import parse_space

    space = parse_space(opts["params"], train_args)
    fixed_keys = {f.split("=", 1)[0].lstrip("+~") for f in space.fixed}
    if not space.distributions and "lr0" not in fixed_keys:
        space = parse_space({**DEFAULT_SPACE, **opts["params"]}, train_args)
    spec = TrialSpec(tune_dir="", fixed=space.fixed, prefixes=space.prefixes)
    configs = [validate(compose_config(trial_overrides(spec, point), config_dir)) for point in _samples(space)]
    if not space.distributions and opts["search"] != "pbt":
        raise ConfigError(f"tune.search={opts['search']}: nothing to search (lr0 is fixed and no key has a range); "
                          "give lr0 a range, e.g. lr0='tag(log, interval(1e-4, 1))', or use tune.search=pbt")
    epochs = max(int(c.epochs) for c in configs)
    high = getattr(space.distributions.get("epochs"), "high", 0)  # epochs=interval(...) or range(...)
    epochs = max(epochs, int(high))
    if opts["search"] == "asha" and opts["grace_period"] > epochs:
        raise ConfigError(f"tune.grace_period={opts['grace_period']}: longer than the run (epochs={epochs}); "
                          f"use tune.grace_period=1 .. {epochs}")
    if opts["search"] == "asha" and opts["asha_rule"] == "promotion" and not configs[0].trainer.save_checkpoints:
        raise ConfigError("trainer.save_checkpoints=false: tune.asha_rule=promotion resumes a promoted trial from its "
                          "checkpoint; drop it, or use tune.asha_rule=top_k")
    return space, configs[0], epochs


def _scheduler(opts: dict[str, Any], space: Any, base: Any, epochs: int) -> tuple[Any, dict[str, Any]]:
    """Ray's scheduler for ``tune.search`` and the param space (Ray distributions, plus the
    starting values of the keys PBT perturbs that the space does not hold)."""
    from ray import tune
    from ray.tune.schedulers import HyperBandScheduler, PopulationBasedTraining

    from framework.search.ray_asha import asha_scheduler
    from framework.search.ray_trial import TIME_ATTR

    param_space = {k: ray_domain(d) for k, d in space.distributions.items()}
    if opts["search"] == "asha" and opts["asha_rule"] == "promotion":
        from framework.search.ray_promotion import RayPromotionASHA
        from framework.search.ray_trainable import trial_index

        return RayPromotionASHA(TIME_ATTR, epochs, opts["grace_period"], opts["reduction_factor"], opts["num_samples"],
                                trial_index), param_space
    if opts["search"] == "asha":
        return asha_scheduler(opts["asha_rule"], time_attr=TIME_ATTR, max_t=epochs, grace_period=opts["grace_period"],
                              reduction_factor=opts["reduction_factor"]), param_space
    if opts["search"] == "hyperband":
        return HyperBandScheduler(time_attr=TIME_ATTR, max_t=epochs,
                                  reduction_factor=opts["reduction_factor"]), param_space
    mutations = {"lr0": param_space.get("lr0", tune.loguniform(1e-4, 1.0))}
    param_space.setdefault("lr0", float(base.lr0))
    for key in PERTURBED:
        name = key.split(".", 1)[1]
        value = base.optimizer.get(name)
        if key in param_space or (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
            default = tune.uniform(0.5, 0.99) if name == "momentum" else tune.loguniform(value / 10, value * 10)
            mutations[key] = param_space[key] if key in param_space else default
            param_space.setdefault(key, float(value))
    return PopulationBasedTraining(time_attr=TIME_ATTR, perturbation_interval=opts["perturbation_interval"],
                                   hyperparam_mutations=mutations, custom_explore_fn=_explore), param_space


def _explore(config: dict[str, Any]) -> dict[str, Any]:
    """PBT's perturbed config kept valid: ``optimizer.momentum`` in [0, 0.99] (x1.2 may pass 1),
    ``optimizer.weight_decay`` >= 0."""
    if "optimizer.momentum" in config:
        config["optimizer.momentum"] = min(max(float(config["optimizer.momentum"]), 0.0), 0.99)
    if "optimizer.weight_decay" in config:
        config["optimizer.weight_decay"] = max(float(config["optimizer.weight_decay"]), 0.0)
    return config


def _tune_dir(opts: dict[str, Any]) -> Path:
    """The tune folder: ``tune.dir`` (new or empty; with ``tune.resume`` the search's own), else
    ``outputs/tune/<date>/<HH-MM-SS-ffffff>``."""
    from framework.config import unique_dir

    if opts["resume"] is not None:
        return Path(str(opts["resume"])).resolve()
    if opts["dir"] is None:
        now = datetime.datetime.now()
        return Path(unique_dir(f"outputs/tune/{now:%Y-%m-%d}/{now:%H-%M-%S-%f}")).resolve()
    folder = Path(str(opts["dir"])).expanduser().resolve()
    if folder.is_dir() and any(folder.iterdir()):
        raise ConfigError(f"tune.dir={opts['dir']}: holds files already (an earlier tune run?); "
                          "give a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _start_ray(opts: dict[str, Any]) -> bool:
    """Join ``tune.address`` or start a local Ray (the local cores); True when started here.

    Raises:
        ConfigError: the cluster cannot be reached, or has fewer CPUs / GPUs than one trial asks.
    """
    import ray

    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=opts["address"], include_dashboard=False, logging_level=logging.WARNING)
        except Exception as exc:  # ConnectionError and the like
            raise ConfigError(f"tune.address={opts['address']}: cannot reach a Ray cluster ({first_line(exc, 120)}); "
                              "start one (ray start --head) or leave tune.address unset for a local Ray") from None
        started = True
    have = ray.cluster_resources()
    for key, res in (("cpus_per_trial", "CPU"), ("gpus_per_trial", "GPU")):
        if opts[key] > have.get(res, 0):
            if started:
                ray.shutdown()
            raise ConfigError(f"tune.{key}={opts[key]}: the Ray cluster has {have.get(res, 0):g} {res}(s) in all, "
                              f"so no trial could start; ask for at most {have.get(res, 0):g}")
    return started


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m framework.tune``: check the command line, run the search, report; the exit
    status: 0, 1 when some trial failed (an error, not a pruned or diverged run), 2 for a
    mistake on the command line (one ``error:`` line each, before any trial), 130 after Ctrl-C."""
    argv = sys.argv[1:] if argv is None else list(argv)
    with exit_on_user_error():
        opts, train_args, config_dir = parse_args(argv)
        if opts["resume"] is not None:  # the recorded command again, in its folder
            from framework.search.ray_resume import resumed_command

            argv, cwd = resumed_command(argv, opts["resume"])
            os.chdir(cwd)  # where the search ran: its relative paths and the user's modules
            opts, train_args, config_dir = parse_args(argv)
        space, base, epochs = _checked_space(opts, train_args, config_dir)
    return _run(opts, space, base, epochs, config_dir, argv)


def _run(opts: dict[str, Any], space: Any, base: Any, epochs: int, config_dir: Optional[str],
         argv: Optional[list[str]] = None) -> int:
    """Start Ray, run the trials (or, with ``tune.resume``, the rest of them:
    :mod:`framework.search.ray_resume`), finish the tune folder
    (:func:`framework.search.ray_results.finish`)."""
    import numpy as np
    import ray
    from omegaconf import OmegaConf
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from framework.search.ray_results import finish, result_log
    from framework.search.ray_resume import fit_watching_sigint, restore
    from framework.search.ray_trainable import LRTrainable, TrialSpec, trial_index

    monitor, mode = task_objective(base)
    with exit_on_user_error():
        scheduler, param_space = _scheduler(opts, space, base, epochs)
        started = _start_ray(opts)
        try:
            tune_dir = _tune_dir(opts)
        except ConfigError:
            if started:
                ray.shutdown()
            raise
    searched = {k: repr(d) for k, d in space.distributions.items()}  # (Optuna's repr: low, high, log, step)
    record = OmegaConf.create({**OmegaConf.to_container(base), "tune": {**opts, "params": opts["params"], "space": {
        **searched, **{k: v for k, v in param_space.items() if k not in searched}}, "overrides": space.fixed,
        "config_dir": config_dir, "monitor": monitor, "mode": mode, "argv": list(argv or []),
        "cwd": os.getcwd()}})
    resuming = opts["resume"] is not None
    if not resuming:  # the folder is a sweep: python -m framework.report reads it; tune.resume its argv
        OmegaConf.save(record, tune_dir / "multirun.yaml")
    if opts["seed"] is not None:  # PBT's perturbations and ASHA's brackets draw from these
        random.seed(opts["seed"])
        np.random.seed(opts["seed"])
    os.environ.pop("TUNE_RESULT_BUFFER_LENGTH", None)  # Ray's default, 1: Tune judges every epoch as it ends
    spec = TrialSpec(tune_dir=str(tune_dir), fixed=space.fixed, prefixes=space.prefixes,
                     config_dir=str(Path(config_dir).resolve()) if config_dir else None, cwd=os.getcwd(),
                     search=opts["search"], scheduler=SEARCHES[opts["search"]], monitor=monitor, mode=mode,
                     cpus_per_trial=opts["cpus_per_trial"])
    trainable = tune.with_resources(tune.with_parameters(LRTrainable, spec=spec),
                                    {"cpu": opts["cpus_per_trial"], "gpu": opts["gpus_per_trial"]})
    keep = {"asha": 2 if opts["asha_rule"] == "promotion" else None, "hyperband": 2, "pbt": 3}[opts["search"]]
    # (PBT, HyperBand and ASHA with promotions restore trials from them)
    print(f"tune: {'resuming ' if resuming else ''}{opts['search']} over {', '.join(param_space) or '(nothing)'}, "
          f"{opts['num_samples']} trials, {monitor} ({mode}); folder {tune_dir}", file=sys.stderr)
    callbacks = [result_log(tune_dir / "results.jsonl")]
    try:
        tuner = restore(tune_dir, trainable, param_space, scheduler, callbacks, opts["search"], monitor, mode) \
            if resuming else tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=monitor, mode=mode, num_samples=opts["num_samples"], scheduler=scheduler,
                search_alg=BasicVariantGenerator(random_state=opts["seed"],
                                                 max_concurrent=opts["max_concurrent_trials"] or 0),
                reuse_actors=True,  # a stopped trial's worker runs the next one (no imports again)
                trial_dirname_creator=lambda t: f"trial_{trial_index(t.trial_id)}"),  # ray/trial_3: run folder 3
            run_config=tune.RunConfig(
                name="ray", storage_path=str(tune_dir), verbose=1,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=keep, checkpoint_at_end=False),
                callbacks=callbacks))
        try:
            results, interrupted = fit_watching_sigint(tuner)
        except KeyboardInterrupt:
            if not ray.util.client.ray.is_connected():  # a second Ctrl-C here: as Python's own
                raise
            print(f"tune: interrupted; the search on the cluster ended with this Ray Client connection. Continue it on the head "
                  f"node: python -m framework.tune tune.resume={tune_dir} tune.address=auto", file=sys.stderr)
            return 130
    finally:
        if started:
            ray.shutdown()
    return finish(tune_dir, results, spec, base, expected=opts["num_samples"], interrupted=interrupted)


if __name__ == "__main__":  # pragma: no cover - python -m framework.tune is the entry
    sys.exit(main())
