"""The command line of ``python -m framework.tune``: the ``tune.<key>`` options (:data:`OPTIONS`),
checked in one line each, and the training overrides every trial gets
(:func:`parse_args`)."""
from __future__ import annotations

from typing import Any, Optional

from framework.errors import ConfigError, suggest
from framework.search import RAY_SEARCHES
from framework.search.ray_asha import ASHA_RULES

__all__ = ["OPTIONS", "SEARCHES", "parse_args"]

#: ``tune.<key>`` defaults (units in the README's "Ray Tune" section).
OPTIONS: dict[str, Any] = {"search": "asha", "num_samples": 8, "address": None, "cpus_per_trial": 1,
                           "gpus_per_trial": 0, "max_concurrent_trials": None, "grace_period": 1,
                           "reduction_factor": 4, "asha_rule": "top_k", "perturbation_interval": 1, "seed": 0,
                           "params": {}, "dir": None, "resume": None}
#: ``tune.search`` values and the name of their scheduler in a pruned run's summary.
SEARCHES = RAY_SEARCHES
def _value(text: str) -> Any:
    """A ``tune.<key>=`` value: null, an int, a float, else the text."""
    if text.strip().lower() in ("null", "none", "~", ""):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip().strip("'\"")


def _whole(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _check(opts: dict[str, Any]) -> list[str]:
    """One message per bad ``tune.`` value."""
    checks = {
        "search": (opts["search"] in SEARCHES, f"use {', '.join(SEARCHES)}"),
        "num_samples": (_whole(opts["num_samples"], 1),
                        "must be a whole number >= 1 (trials), e.g. tune.num_samples=16"),
        "address": (opts["address"] is None or isinstance(opts["address"], str),
                    "use auto (a running cluster), ray://<head>:10001, <head>:6379, or leave it unset (a local Ray)"),
        "cpus_per_trial": (isinstance(opts["cpus_per_trial"], (int, float)) and opts["cpus_per_trial"] > 0,
                           "must be a number > 0 (CPU cores per trial), e.g. tune.cpus_per_trial=2"),
        "gpus_per_trial": (isinstance(opts["gpus_per_trial"], (int, float)) and opts["gpus_per_trial"] >= 0,
                           "must be a number >= 0 (GPUs per trial; 0.5 = two trials share one), "
                           "e.g. tune.gpus_per_trial=1"),
        "max_concurrent_trials": (opts["max_concurrent_trials"] is None or _whole(opts["max_concurrent_trials"], 1),
                                  "must be a whole number >= 1, or null (as many as the resources allow)"),
        "grace_period": (_whole(opts["grace_period"], 1),
                         "must be a whole number of epochs >= 1, e.g. tune.grace_period=1"),
        "reduction_factor": (isinstance(opts["reduction_factor"], (int, float)) and opts["reduction_factor"] > 1,
                             "must be a number > 1 (keep 1/reduction_factor of the trials at each rung), e.g. 3"),
        "asha_rule": (opts["asha_rule"] in ASHA_RULES, "use top_k (the best 1/reduction_factor of the trials at a rung "
                                                     "go on, as Optuna's), percentile (Ray's) or promotion (trials "
                                                     "paused at rungs, promoted later), e.g. tune.asha_rule=top_k"),
        "perturbation_interval": (_whole(opts["perturbation_interval"], 1),
                                  "must be a whole number of epochs >= 1, e.g. tune.perturbation_interval=2"),
        "seed": (opts["seed"] is None or _whole(opts["seed"], 0), "must be a whole number >= 0 or null"),
        "resume": (opts["resume"] is None or isinstance(opts["resume"], str),
                   "give the tune folder of the search to continue, e.g. tune.resume=outputs/tune/<date>/<time>"),
    }
    promotion = opts["search"] == "asha" and opts["asha_rule"] == "promotion"
    if promotion and not _whole(opts["reduction_factor"], 2):
        checks["reduction_factor"] = (False, "must be a whole number >= 2 with tune.asha_rule=promotion, e.g. 4")
    if promotion and opts["max_concurrent_trials"] is not None:  # Ray's cap counts paused trials
        checks["max_concurrent_trials"] = (False, "tune.asha_rule=promotion keeps trials paused at rungs, which Ray's "
                                                  "cap counts; leave it null and limit parallel trials with "
                                                  "tune.cpus_per_trial")
    if opts["search"] != "asha" and opts["asha_rule"] in ASHA_RULES and opts["asha_rule"] != OPTIONS["asha_rule"] \
            and opts["resume"] is None:  # no other search reads it (a resumed search replays its own command)
        checks["asha_rule"] = (False, "applies to tune.search=asha only; drop it, or use tune.search=asha")
    if opts["search"] == "pbt" and opts["max_concurrent_trials"] is not None:  # Ray's cap counts paused trials
        checks["max_concurrent_trials"] = (False, "PBT needs its whole population (tune.num_samples) alive at once; "
                                                  "leave it null and limit parallel trials with tune.cpus_per_trial")
    shown = lambda v: "null" if v is None else v  # noqa: E731
    return [f"tune.{k}={shown(opts[k])}: {fix}" for k, (ok, fix) in checks.items() if not ok]


def parse_args(argv: list[str]) -> tuple[dict[str, Any], list[str], Optional[str]]:
    """``(tune options, training overrides, --config-dir)`` of a command line.

    Raises:
        ConfigError: an unknown ``tune.`` key, a bad value, a key the search sets itself
            (``resume``, ``search``, ``mode``, ``hydra.*``, ``-m``), ``lr0=auto``; each in one line.
    """
    opts = {k: (dict(v) if isinstance(v, dict) else v) for k, v in OPTIONS.items()}
    train_args: list[str] = []
    config_dir: Optional[str] = None
    errors: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("--config-dir", "-cd"):
            if not args:
                raise ConfigError(f"{arg}: give a folder, e.g. --config-dir conf")
            config_dir = args.pop(0)
            continue
        if arg.startswith("--config-dir="):
            config_dir = arg.split("=", 1)[1]
            continue
        if arg in ("-m", "--multirun"):
            raise ConfigError(f"{arg}: python -m framework.tune runs the trials itself; drop {arg}")
        key, sep, text = arg.lstrip("+~").partition("=")
        if key.startswith("tune.params."):
            opts["params"][key[len("tune.params."):]] = text
        elif key.startswith("tune."):
            name = key[len("tune."):]
            if name not in OPTIONS or name == "params":
                errors.append(f"{arg}: unknown key '{key}'{suggest(name, OPTIONS)}; tune keys are "
                              f"{', '.join(OPTIONS)} (tune.params.<key>=<sweep> for the space)")
            else:
                opts[name] = _value(text)
        elif key in ("resume", "search", "mode") or key.startswith("hydra."):
            errors.append(f"{arg}: python -m framework.tune sets {key} for each trial; drop it"
                          + (" (the trials' folders: tune.dir=<folder>)" if key.startswith("hydra.") else ""))
        elif key == "lr0" and text.strip() == "auto":
            errors.append("lr0=auto: the search chooses lr0; give it a range, e.g. lr0='tag(log, interval(1e-4, 1))'")
        else:
            train_args.append(arg)
    errors += _check(opts)
    if errors:
        raise ConfigError(errors)
    return opts, train_args, config_dir
