"""The search space of ``hydra/sweeper=lr_search``: Hydra's sweep syntax turned into Optuna
distributions, a sampled value turned back into a command-line override, and the same
distributions as Ray Tune's (:func:`ray_domain`, for ``python -m framework.tune``).

The syntax is that of Hydra's Optuna sweeper (``hydra.sweeper.params`` or the command line):

- ``interval(a, b)``: uniform on ``[a, b]`` (``FloatDistribution``); ``tag(log, interval(a, b))``:
  log-uniform; ``int(interval(a, b))`` (Hydra's cast, as with its Optuna sweeper) or
  ``tag(int, interval(a, b))``: whole numbers (``IntDistribution``, log with ``tag(log, ...)``);
- ``choice(x, y, ...)`` or ``x,y,...``: one of the values (``CategoricalDistribution``);
- ``range(start, stop[, step])``: integers ``start, start + step, ... < stop``
  (``IntDistribution`` with that step); floats: one of the values (categorical);
- a plain value (``epochs=3``): the same in every trial.

Source: Hydra's override grammar (``hydra.core.override_parser``); the mapping follows
``hydra_plugins.hydra_optuna_sweeper._impl.create_optuna_distribution_from_override`` (Hydra
1.3), written anew for Optuna >= 4.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Sequence

from framework.errors import ConfigError

__all__ = ["SearchSpace", "parse_space", "override_value", "ray_domain"]


class SearchSpace:
    """The parsed space: ``distributions`` (key -> Optuna distribution; the parameter names of
    the study), ``fixed`` (overrides every trial gets, as strings) and ``prefixes`` (key -> the
    ``+``/``++`` it was written with, for the trials' overrides)."""

    def __init__(self, distributions: dict[str, Any], fixed: list[str], prefixes: Optional[dict[str, str]] = None):
        self.distributions, self.fixed, self.prefixes = distributions, fixed, dict(prefixes or {})

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """A trial's command-line overrides: the fixed ones, then ``key=value`` per sampled key."""
        return [*self.fixed, *(f"{self.prefixes.get(k, '')}{k}={override_value(v)}" for k, v in params.items())]

    def probe(self) -> dict[str, Any]:
        """One point of the space (the first choice, or the low end, of each key): what
        composing a job's config is checked with before the study exists."""
        return {k: d.choices[0] if hasattr(d, "choices") else d.low for k, d in self.distributions.items()}

    def grid(self) -> dict[str, list[Any]]:
        """The values of every key, for ``GridSampler(search_space=...)``.

        Raises:
            ConfigError: a key is an interval (a grid needs listed values).
        """
        from optuna.distributions import CategoricalDistribution, IntDistribution

        grid = {}
        for key, dist in self.distributions.items():
            if isinstance(dist, CategoricalDistribution):
                grid[key] = list(dist.choices)
            elif isinstance(dist, IntDistribution) and not dist.log:
                grid[key] = list(range(dist.low, dist.high + 1, dist.step))
            else:
                raise ConfigError(f"hydra.sweeper.params.{key}: the grid sampler needs listed values, not an interval; "
                                  f"use choice(...) or a,b,c (e.g. {key}=1e-3,1e-2,1e-1), or another sampler")
        return grid

    def size(self) -> int | None:
        """The number of points of the space when every key is listed (a full grid), else None."""
        try:
            grid = self.grid()
        except ConfigError:
            return None
        n = 1
        for values in grid.values():
            n *= len(values)
        return n


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _distribution(override: Any) -> Any:
    """One sweep override (``override.is_sweep_override()``) as an Optuna distribution."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value, key = override.value(), override.get_key_element()
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        low, high = value.start, value.end
        if not (_number(low) and _number(high)) or not low < high or (log and low <= 0):
            raise ConfigError(f"{key}=interval({low}, {high}): needs two numbers, low < high (and low > 0 with "
                              f"tag(log, ...)), e.g. {key}='tag(log, interval(1e-4, 1))'")
        if "int" in value.tags or (isinstance(low, int) and isinstance(high, int)):
            if low != int(low) or high != int(high):
                raise ConfigError(f"{key}=tag(int, interval({low}, {high})): the ends must be whole numbers")
            return IntDistribution(int(low), int(high), log=log)
        return FloatDistribution(float(low), float(high), log=log)
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"{key}=range({value.start}, {value.stop}, {value.step}): holds no value; "
                              "stop must lie beyond start")
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values) and len(values) > 1:
            return IntDistribution(values[0], values[-1], step=values[1] - values[0])
        return CategoricalDistribution(values)
    if isinstance(value, ChoiceSweep):
        values = list(override.sweep_iterator())
        if any(isinstance(v, (list, dict)) for v in values):
            raise ConfigError(f"{key}: a choice of lists or dicts is not supported by hydra/sweeper=lr_search; "
                              "choose between numbers, strings or booleans (e.g. config names)")
        if len(set(map(repr, values))) != len(values):
            raise ConfigError(f"{key}: a value is listed twice in {','.join(map(str, values))}; list each once")
        return CategoricalDistribution(values)
    raise ConfigError(f"{key}={override.value()}: glob sweeps are not supported by hydra/sweeper=lr_search; "
                      "list the values with choice(...)")


def parse_space(params: Mapping[str, Any] | None, arguments: Sequence[str]) -> SearchSpace:
    """The space of ``hydra.sweeper.params`` (key -> sweep string) and the command-line
    ``arguments`` (which win over ``params`` for the same key).

    Raises:
        ConfigError: a string Hydra cannot parse, an empty range, an interval with low >= high
            (or <= 0 under ``tag(log, ...)``), a value listed twice; each names the key.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    strings = {str(k): f"{k}={v}" for k, v in (params or {}).items()}
    for arg in arguments:
        strings[arg.split("=", 1)[0].lstrip("+~")] = arg
    distributions: dict[str, Any] = {}
    fixed: list[str] = []
    prefixes: dict[str, str] = {}
    for name, text in strings.items():
        try:
            override = parser.parse_override(text)
        except HydraException as exc:
            raise ConfigError(f"{text}: not a sweep Hydra can parse ({str(exc).splitlines()[0]}); e.g. "
                              f"lr0='tag(log, interval(1e-4, 1))' or scheduler=cosine,step") from None
        if override.is_sweep_override():
            element = override.get_key_element()
            distributions[name] = _distribution(override)
            prefixes[name] = element[:len(element) - len(element.lstrip("+"))]
        else:
            fixed.append(text)
    return SearchSpace(distributions, fixed, prefixes)


_PLAIN = re.compile(r"^[A-Za-z0-9_.\-+/:@]*$")


def override_value(value: Any) -> str:
    """A sampled value as Hydra override text: numbers in ``repr`` (bit-exact), ``null`` for
    None, ``true``/``false``, strings bare when Hydra reads them back as the same string, else
    quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if _PLAIN.match(text) and text and text.lower() not in ("null", "true", "false") and not _looks_numeric(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def ray_domain(dist: Any) -> Any:
    """Ray Tune's distribution for an Optuna one (:func:`~framework.search.space.parse_space`):
    log-uniform -> ``tune.loguniform(low, high)``, uniform -> ``tune.uniform`` (``tune.quniform``
    with a step), integers -> ``tune.randint(low, high + 1)`` (Ray's upper bound is exclusive),
    ``tune.lograndint(low, high + 1)`` or, with a step, ``tune.qrandint(low, high, step)`` (inclusive),
    a categorical -> ``tune.choice(values)``.

    Raises:
        TypeError: ``dist`` is not one of Optuna's distributions (a programming error).
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from ray import tune

    if isinstance(dist, CategoricalDistribution):
        return tune.choice(list(dist.choices))
    if isinstance(dist, FloatDistribution):
        if dist.log:
            return tune.loguniform(dist.low, dist.high)
        return tune.quniform(dist.low, dist.high, dist.step) if dist.step else tune.uniform(dist.low, dist.high)
    if isinstance(dist, IntDistribution):
        if dist.log:
            return tune.lograndint(dist.low, dist.high + 1)
        return tune.qrandint(dist.low, dist.high, dist.step) if dist.step > 1 else tune.randint(dist.low, dist.high + 1)
    raise TypeError(f"not a search distribution: {dist!r}")
