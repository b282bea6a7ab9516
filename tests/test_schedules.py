"""LR policies against PyTorch's own schedulers (1e-12) and hand-worked tables."""
from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch.optim import lr_scheduler as tls

from framework import registry, schedules
from framework.config import ConfigError
from framework.schedules import LRPlan
from tests.conftest import compose_cfg

LR0, LRF = 0.1, 0.01


def torch_lrs(make, T: int, lr0: float = LR0, steps_per_epoch: int = 1) -> list[float]:
    """LR held by a one-parameter SGD at each of T steps, stepping ``make(opt)`` per epoch."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr0)
    sched = make(opt)
    out = []
    for k in range(T):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if (k + 1) % steps_per_epoch == 0:
            sched.step()
    return out


def plan_lrs(schedule_cls, T: int, lr0: float = LR0, W: int = 0, s: float = 0.1, spe: int = 1,
             interval: str = "step", **kwargs) -> list[float]:
    plan = LRPlan(lambda total: schedule_cls(total=total, **kwargs), T, spe, W, s, interval)
    return [lr0 * m for m in plan.multipliers()]


def assert_close(ours, ref, tol=1e-12):
    assert len(ours) == len(ref)
    for k, (a, b) in enumerate(zip(ours, ref)):
        assert abs(a - b) <= tol, f"step {k}: ours {a!r} vs reference {b!r}"


@pytest.mark.parametrize("T", [2, 3, 7, 100, 1000])
def test_cosine_equals_cosine_annealing_lr(T):
    ref = torch_lrs(lambda o: tls.CosineAnnealingLR(o, T_max=T - 1, eta_min=LR0 * LRF), T)
    ours = plan_lrs(schedules.Cosine, T, lrf=LRF)
    assert_close(ours, ref)
    assert ours[0] == LR0 and ours[-1] == LR0 * LRF


@pytest.mark.parametrize("T", [2, 5, 64, 500])
def test_linear_equals_linear_lr(T):
    ref = torch_lrs(lambda o: tls.LinearLR(o, start_factor=1.0, end_factor=LRF, total_iters=T - 1), T)
    ours = plan_lrs(schedules.Linear, T, lrf=LRF)
    assert_close(ours, ref)
    assert ours[-1] == LR0 * LRF


@pytest.mark.parametrize(
    "T,kwargs",
    [
        (12, {}),
        (100, {}),
        (1000, {"pct_start": 0.25}),
        (50, {"anneal_strategy": "linear"}),
        (60, {"three_phase": True}),
        (37, {"div_factor": 10.0, "pct_start": 0.4}),
    ],
)
def test_onecycle_equals_onecycle_lr(T, kwargs):
    div = kwargs.get("div_factor", 25.0)
    ref = torch_lrs(
        lambda o: tls.OneCycleLR(
            o, max_lr=LR0, total_steps=T, final_div_factor=1 / (div * LRF), cycle_momentum=False, **kwargs
        ),
        T,
    )
    ours = plan_lrs(schedules.OneCycle, T, lrf=LRF, **kwargs)
    assert_close(ours, ref)
    assert ours[-1] == LR0 * LRF


@pytest.mark.parametrize("step_size,gamma", [(1, 0.5), (3, 0.1), (7, 0.9)])
def test_step_equals_step_lr(step_size, gamma):
    T = 40
    ref = torch_lrs(lambda o: tls.StepLR(o, step_size=step_size, gamma=gamma), T)
    assert_close(plan_lrs(schedules.Step, T, step_size=step_size, gamma=gamma), ref)


@pytest.mark.parametrize("milestones", [[5], [3, 10, 11], [1, 39]])
def test_multistep_equals_multistep_lr(milestones):
    T = 40
    ref = torch_lrs(lambda o: tls.MultiStepLR(o, milestones=milestones, gamma=0.3), T)
    assert_close(plan_lrs(schedules.MultiStep, T, milestones=milestones, gamma=0.3), ref)


def test_constant_is_lr0():
    assert plan_lrs(schedules.Constant, 5) == [LR0] * 5


@pytest.mark.parametrize("W,s", [(1, 0.1), (5, 0.1), (10, 0.5), (3, 1.0)])
def test_warmup_then_cosine_equals_sequential_lr(W, s):
    """Warmup = LinearLR(start_factor=s, total_iters=W), then cosine over the remaining T-W steps."""
    T = 30
    ref = torch_lrs(
        lambda o: tls.SequentialLR(
            o,
            [tls.LinearLR(o, start_factor=s, total_iters=W),
             tls.CosineAnnealingLR(o, T_max=T - W - 1, eta_min=LR0 * LRF)],
            milestones=[W],
        ),
        T,
    )
    ours = plan_lrs(schedules.Cosine, T, W=W, s=s, lrf=LRF)
    assert_close(ours, ref)
    # hand-worked: step 0 is lr0*s, step W is lr0, rising strictly in between (s < 1)
    assert ours[0] == pytest.approx(LR0 * s, abs=1e-15)
    assert ours[W] == pytest.approx(LR0, abs=1e-15)
    if s < 1:
        assert all(a < b for a, b in zip(ours[:W], ours[1 : W + 1]))


def test_epoch_interval_step_lr_changes_only_at_epoch_starts():
    spe, epochs = 4, 9
    T = spe * epochs
    ref = torch_lrs(lambda o: tls.StepLR(o, step_size=2, gamma=0.5), T, steps_per_epoch=spe)
    ours = plan_lrs(schedules.Step, T, spe=spe, interval="epoch", step_size=2, gamma=0.5)
    assert_close(ours, ref)


def test_epoch_interval_cosine_with_warmup_epochs():
    """2 warmup epochs of 5 steps, then cosine over the 4 remaining epochs (epoch-constant)."""
    spe, W, T = 5, 10, 30
    ours = plan_lrs(schedules.Cosine, T, W=W, s=0.1, spe=spe, interval="epoch", lrf=LRF)
    per_epoch = [LR0 * (LRF + (1 - LRF) * (1 + math.cos(math.pi * e / 3)) / 2) for e in range(4)]
    expected = [LR0 * (0.1 + 0.9 * k / W) for k in range(W)] + [v for v in per_epoch for _ in range(spe)]
    assert_close(ours, expected)
    assert ours[-1] == LR0 * LRF


def test_step_schedule_hand_worked_table():
    """step_size=2, gamma=0.5, lr0=0.1, T=8 (from the issue)."""
    ours = plan_lrs(schedules.Step, 8, step_size=2, gamma=0.5)
    assert_close(ours, [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125], tol=1e-15)


def test_onecycle_peaks_exactly_at_lr0_when_rise_ends_on_a_step():
    """T=12, pct_start=0.25: the rise ends at step 0.25*12-1 = 2, which holds lr0 exactly."""
    ours = plan_lrs(schedules.OneCycle, 12, lrf=LRF, pct_start=0.25)
    assert max(ours) == ours[2] == LR0
    assert ours[0] == pytest.approx(LR0 / 25, abs=1e-15)
    assert ours[11] == LR0 * LRF
    assert all(a < b for a, b in zip(ours[:3], ours[1:3]))
    assert all(a > b for a, b in zip(ours[2:], ours[3:]))


@pytest.mark.parametrize(
    "cls,kwargs,key",
    [
        (schedules.Step, {"step_size": 0}, "step_size"),
        (schedules.Step, {"step_size": 2, "gamma": 0.0}, "gamma"),
        (schedules.Step, {"step_size": 2, "gamma": 1.5}, "gamma"),
        (schedules.MultiStep, {"milestones": [5, 3]}, "milestones"),
        (schedules.MultiStep, {"milestones": [0, 3]}, "milestones"),
        (schedules.Cosine, {"lrf": 1.5}, "lrf"),
        (schedules.Linear, {"lrf": -0.1}, "lrf"),
        (schedules.OneCycle, {"lrf": 0.01, "pct_start": 0.01}, "pct_start"),
        (schedules.OneCycle, {"lrf": 0.01, "pct_start": 1.0}, "pct_start"),
        (schedules.OneCycle, {"lrf": 0.01, "anneal_strategy": "exp"}, "anneal_strategy"),
        (schedules.OneCycle, {"lrf": 0.01, "div_factor": 0}, "div_factor"),
    ],
)
def test_bad_schedule_arguments_raise(cls, kwargs, key):
    with pytest.raises(ConfigError, match=f"scheduler.{key}="):
        cls(total=20, **kwargs)


@pytest.mark.parametrize("W,T", [(10, 10), (11, 10)])
def test_warmup_covering_the_run_is_refused(W, T):
    with pytest.raises(ConfigError, match="warmup"):
        LRPlan(lambda total: schedules.Constant(total), T, 5, W)


SCHEDULER_FILES = sorted((registry.CONF_DIR / "scheduler").rglob("*.yaml"))


def test_scheduler_files_found():
    assert len(SCHEDULER_FILES) >= 6


@pytest.mark.parametrize("path", SCHEDULER_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_every_schedule_invariants(path, interval):
    """Finite, positive, never above lr0, warmup rising, step W = the schedule's first value,
    last step = lr0*lrf where lrf applies."""
    cfg = compose_cfg(f"scheduler={path.stem}", f"scheduler.interval={interval}", "lr0=0.1", "lrf=0.01")
    spe, epochs, W = 10, 12, 10
    plan = LRPlan(
        lambda total: registry.instantiate(cfg.scheduler, "scheduler", reserved=("interval",), total=total),
        spe * epochs, spe, W, 0.1, interval,
    )
    lrs = [cfg.lr0 * m for m in plan.multipliers()]
    assert all(math.isfinite(v) and 0 < v <= cfg.lr0 * (1 + 1e-12) for v in lrs)
    assert all(a < b for a, b in zip(lrs[: W - 1], lrs[1:W]))
    assert lrs[W] == pytest.approx(cfg.lr0 / cfg.scheduler.get("div_factor", 1.0), rel=1e-12)
    if "lrf" in cfg.scheduler:
        assert lrs[-1] == pytest.approx(cfg.lr0 * cfg.lrf, rel=1e-12)


def test_every_schedule_documents_its_formula():
    classes = [c for _, c in inspect.getmembers(schedules, inspect.isclass)
               if issubclass(c, schedules.Schedule) and "__call__" in vars(c) and c is not schedules.Schedule]
    assert len(classes) >= 6
    for cls in classes:
        lines = [line.strip() for line in (cls.__doc__ or "").splitlines()]
        assert any(line.startswith("Formula: m(t) =") for line in lines), cls.__name__
