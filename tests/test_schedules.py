"""LR policies against PyTorch's own schedulers (1e-12) and hand-worked tables."""
from __future__ import annotations

import functools
import math

import pytest
import torch
from torch.optim import lr_scheduler as tls

from framework import registry, schedules
from framework.config import validate
from framework.errors import ConfigError
from framework.schedules import LRPlan
from framework.schedules.plan import build_plan, plan_from
from tests.helpers import ROOT, compose_cfg

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


def make_plan(schedule_cls, T: int, spe: int = 1, W: int = 0, s: float = 0.1, interval: str = "step",
              warmup_momentum=None, **kwargs) -> LRPlan:
    """The plan of ``schedule_cls(**kwargs)`` over a run of ``T`` steps (units as for a config)."""
    return plan_from(schedule_cls, functools.partial(schedule_cls, **kwargs), T, spe, W, s, interval, warmup_momentum)


def plan_lrs(schedule_cls, T: int, lr0: float = LR0, W: int = 0, s: float = 0.1, spe: int = 1,
             interval: str = "step", **kwargs) -> list[float]:
    return [lr0 * m for m in make_plan(schedule_cls, T, spe, W, s, interval, **kwargs).multipliers()]


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
        cls(total_units=20, **kwargs)


@pytest.mark.parametrize("W,T", [(10, 10), (11, 10)])
def test_warmup_covering_the_run_is_refused(W, T):
    cfg = compose_cfg("scheduler=constant", f"warmup_steps={W}", f"max_steps={T}", "epochs=10")
    with pytest.raises(ConfigError, match=f"warmup_steps={W}: gives {W} warmup steps but the run has only {T}"):
        build_plan(cfg, num_batches=5)


SCHEDULER_FILES = sorted((registry.CONF_DIR / "scheduler").rglob("*.yaml"))


#: What a schedule file that replays a file of its own (``path: ???``) is tested with.
FILE_INPUTS = {"piecewise": [f"scheduler.path={ROOT / 'examples/schedules/warmup_hold_decay.yaml'}"]}


def test_scheduler_files_found():
    assert len(SCHEDULER_FILES) >= 6


@pytest.mark.parametrize("path", SCHEDULER_FILES, ids=lambda p: p.stem)
@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_every_schedule_invariants(path, interval):
    """Finite, positive, never above lr0, warmup rising, step W = the schedule's first value,
    last step = lr0*lrf where lrf applies."""
    spe, epochs, W = 10, 12, 10
    own = FILE_INPUTS.get(path.stem, [])
    if own:  # absolute LRs replayed from a file, step by step: its own warmup, no other (tests/test_piecewise.py)
        with pytest.raises(ConfigError, match="scheduler.interval=epoch" if interval == "epoch" else "warmup_steps"):
            build_plan(validate(compose_cfg(f"scheduler={path.stem}", f"scheduler.interval={interval}",
                                            f"warmup_steps={W}", *own)), num_batches=spe)
        if interval == "epoch":
            return
        W = 0
    last = {}
    for lrf in (0.01, 0.05):
        cfg = compose_cfg(f"scheduler={path.stem}", f"scheduler.interval={interval}", "lr0=0.1", f"lrf={lrf}",
                          f"epochs={epochs}", f"warmup_steps={W}", *own)
        plan = build_plan(cfg, num_batches=spe)
        assert (plan.total_steps, plan.warmup_steps, plan.steps_per_epoch) == (120, W, 10)
        lrs = [cfg.lr0 * m for m in plan.multipliers()]
        assert all(math.isfinite(v) and 0 < v <= cfg.lr0 * (1 + 1e-12) for v in lrs)
        assert all(a < b for a, b in zip(lrs[: W - 1], lrs[1:W]))
        last[lrf] = lrs[-1]
    # a schedule claims to end at lr0*lrf exactly when its last step follows lrf there (two values
    # of lrf tell it from one that lands on 0.1*0.01 by chance); no list of names to keep
    ends = all(last[lrf] == pytest.approx(0.1 * lrf, rel=1e-12) for lrf in last)
    assert ends == plan.schedule.ends_at_lrf, (path.stem, last)
    with pytest.raises(ConfigError):  # a horizon of zero units is refused by every schedule
        registry.instantiate(cfg.scheduler, "scheduler", reserved=("interval",), total_units=0)


def test_every_schedule_documents_its_formula():
    """Every class a scheduler file names (wherever it lives) that computes its own multiplier."""
    targets = {registry.locate(compose_cfg(f"scheduler={p.stem}").scheduler._target_) for p in SCHEDULER_FILES}
    classes = [c for c in targets if "__call__" in vars(c) or "decay" in vars(c)]
    assert len(classes) >= 6
    for cls in classes:
        lines = [line.strip() for line in (cls.__doc__ or "").splitlines()]
        assert any(line.startswith("Formula: m(t) =") for line in lines), cls.__name__


# ---- the rest of the library (issue: complete LR-policy library) ----

def test_exponential_equals_exponential_lr():
    T = 30
    ref = torch_lrs(lambda o: tls.ExponentialLR(o, gamma=0.9), T)
    assert_close(plan_lrs(schedules.Exponential, T, gamma=0.9), ref)


@pytest.mark.parametrize("power", [0.9, 1.0, 2.0])
def test_poly_with_lrf_0_equals_polynomial_lr(power):
    T = 25
    ref = torch_lrs(lambda o: tls.PolynomialLR(o, total_iters=T - 1, power=power), T)
    assert_close(plan_lrs(schedules.Poly, T, lrf=0.0, power=power), ref)


def test_poly_hand_worked_table():
    """power 2, T = 11, lr0 0.1, lrf 0.01: step 5 = 0.1*(0.01 + 0.99*0.5^2) = 0.02575."""
    lrs = plan_lrs(schedules.Poly, 11, lrf=0.01, power=2.0)
    assert lrs[5] == pytest.approx(0.02575, abs=1e-15) and lrs[10] == 0.001
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


@pytest.mark.parametrize("T_0,T_mult", [(5, 1), (3, 2), (4, 3)])
def test_cosine_restarts_equals_warm_restarts(T_0, T_mult):
    T = 60
    ref = torch_lrs(lambda o: tls.CosineAnnealingWarmRestarts(o, T_0=T_0, T_mult=T_mult, eta_min=LR0 * LRF), T)
    assert_close(plan_lrs(schedules.CosineRestarts, T, lrf=LRF, T_0=T_0, T_mult=T_mult), ref)


def test_cosine_restarts_decayed_peak_never_goes_below_the_floor():
    """lrf 0.3, decay 0.5: cycle 2's peak 0.25 < 0.3 is held at the floor."""
    lrs = plan_lrs(schedules.CosineRestarts, 12, lrf=0.3, T_0=4, decay=0.5)
    assert min(lrs) >= LR0 * 0.3 - 1e-15 and lrs[8:] == [pytest.approx(LR0 * 0.3, abs=1e-15)] * 4


def test_cosine_restarts_peak_decay_hand_worked():
    """T_0=4, decay 0.5: restarts at t = 4, 8 peak at 0.5 and 0.25 of lr0."""
    lrs = plan_lrs(schedules.CosineRestarts, 12, lrf=0.0, T_0=4, decay=0.5)
    assert lrs[0] == LR0 and lrs[4] == LR0 * 0.5 and lrs[8] == LR0 * 0.25
    assert lrs[2] == pytest.approx(LR0 * 0.5, abs=1e-15)  # half-way down the first cosine


def torch_momenta(make, T, optimizer="sgd"):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=LR0, momentum=0.9) if optimizer == "sgd" else torch.optim.Adam([p], lr=LR0)
    sched = make(opt)
    lrs, moms = [], []
    for _ in range(T):
        g = opt.param_groups[0]
        lrs.append(g["lr"])
        moms.append(g["momentum"] if optimizer == "sgd" else g["betas"][0])
        opt.step()
        sched.step()
    return lrs, moms


def plan_momenta(schedule_cls, T, **kwargs):
    plan = make_plan(schedule_cls, T, **kwargs)
    return [LR0 * plan(k) for k in range(T)], [plan.momentum(k, 0.9) for k in range(T)]


@pytest.mark.parametrize("mode,gamma", [("triangular", 1.0), ("triangular2", 1.0), ("exp_range", 0.97)])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_cyclic_equals_cyclic_lr_with_momentum(mode, gamma, optimizer):
    T = 50
    ref_lr, ref_m = torch_momenta(
        lambda o: tls.CyclicLR(o, base_lr=LR0 * LRF, max_lr=LR0, step_size_up=4, step_size_down=6, mode=mode,
                               gamma=gamma, cycle_momentum=True, base_momentum=0.8, max_momentum=0.9), T, optimizer)
    lrs, moms = plan_momenta(schedules.Cyclic, T, lrf=LRF, step_size_up=4, step_size_down=6, mode=mode, gamma=gamma)
    assert_close(lrs, ref_lr)
    assert_close(moms, ref_m)


def test_cyclic_triangular_hand_worked_table():
    """Bounds 0.001 ... 0.01 (lr0 0.01, lrf 0.1), half-cycle 4 steps, T = 9."""
    lrs = [0.01 * m for m in LRPlan(schedules.Cyclic(9, lrf=0.1, step_size_up=4), 9, 1).multipliers()]
    assert_close(lrs, [0.001, 0.00325, 0.0055, 0.00775, 0.01, 0.00775, 0.0055, 0.00325, 0.001], tol=1e-15)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_onecycle_momentum_equals_onecycle_lr(optimizer):
    T = 40
    ref_lr, ref_m = torch_momenta(
        lambda o: tls.OneCycleLR(o, max_lr=LR0, total_steps=T, final_div_factor=1 / (25 * LRF)), T, optimizer)
    lrs, moms = plan_momenta(schedules.OneCycle, T, lrf=LRF)
    assert_close(lrs, ref_lr)
    assert_close(moms, ref_m)


def test_onecycle_two_epochs_of_ten_steps():
    lrs = plan_lrs(schedules.OneCycle, 20, lrf=LRF)
    assert len(set(lrs)) == 20 and lrs[19] == LR0 * LRF


def test_step_epoch_interval_hand_worked():
    """interval=epoch, step_size=1, gamma=0.5, 3 epochs of 4 steps: constant inside each epoch."""
    lrs = plan_lrs(schedules.Step, 12, spe=4, interval="epoch", step_size=1, gamma=0.5)
    assert lrs == [0.1] * 4 + [0.05] * 4 + [0.025] * 4


def test_wsd_hand_worked_table():
    """T = 10, decay_frac 0.2, linear, lr0 0.1, lrf 0.01: 0.1 x8, 0.0505, 0.001."""
    lrs = plan_lrs(schedules.WSD, 10, lrf=0.01, decay_frac=0.2)
    assert_close(lrs, [0.1] * 8 + [0.0505, 0.001], tol=1e-15)


@pytest.mark.parametrize("shape,mid", [("cosine", 0.5), ("1-sqrt", 1 - 0.5**0.5)])
def test_wsd_shapes(shape, mid):
    """D = 4 decay steps: step 7 has done p = 2/4 of the decay."""
    lrs = plan_lrs(schedules.WSD, 10, lrf=0.0, decay_frac=0.4, decay_shape=shape)
    assert lrs[:6] == [0.1] * 6 and lrs[7] == pytest.approx(0.1 * mid, abs=1e-15) and lrs[9] == 0.0


@pytest.mark.parametrize("frac", [0.01, 0.06, 1.5, 0.0])
def test_wsd_decay_shorter_than_a_step_or_longer_than_the_run_is_refused(frac):
    with pytest.raises(ConfigError, match="scheduler.decay_frac"):
        schedules.WSD(10, lrf=0.01, decay_frac=frac)


def test_inverse_sqrt_after_warmup_is_fairseq_rule():
    """W = 4 warmup steps: step k >= 4 has lr0*sqrt(4/k)."""
    lrs = plan_lrs(schedules.InverseSqrt, 20, W=4, s=0.25)
    assert_close(lrs[4:], [LR0 * math.sqrt(4 / k) for k in range(4, 20)], tol=1e-15)
    assert schedules.InverseSqrt(50, warmup_units=0).timescale == 5  # no warmup: a tenth of the phase
    with pytest.raises(ConfigError, match="scheduler.timescale"):
        schedules.InverseSqrt(10, warmup_units=0, timescale=0)


def plateau_epoch_lrs(metrics, warmup_epochs=0, spe=3, **kwargs):
    """LR of each epoch's last step under a plan fed ``metrics[e]`` after each epoch."""
    epochs = len(metrics)
    plan = make_plan(schedules.Plateau, epochs * spe, spe, warmup_epochs * spe, 0.1, "epoch", **kwargs)
    out = []
    for e, value in enumerate(metrics):
        out.append(LR0 * plan(e * spe + spe - 1))
        plan.observe(e, {"val/loss": value, "val/acc": value})
    return out


def test_plateau_hand_worked_table():
    """factor 0.5, patience 0, 2 warmup epochs, 6 epochs, metric never changes."""
    lrs = plateau_epoch_lrs([1.0] * 6, warmup_epochs=2, lrf=0.01, factor=0.5, patience=0)
    assert lrs[0] < lrs[1] < 0.1  # warmup epochs rise toward lr0
    assert_close(lrs[2:], [0.1, 0.1, 0.05, 0.025], tol=1e-15)


@pytest.mark.parametrize("kwargs", [
    {"mode": "min", "factor": 0.5, "patience": 1},
    {"mode": "max", "factor": 0.3, "patience": 0, "cooldown": 2},
    {"mode": "min", "factor": 0.5, "patience": 0, "threshold": 0.1, "threshold_mode": "abs"},
])
def test_plateau_equals_reduce_lr_on_plateau(kwargs):
    metrics = [1.0, 0.9, 0.95, 0.95, 0.94, 0.7, 0.71, 0.72, 0.73, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR0)
    ref_sched = tls.ReduceLROnPlateau(opt, min_lr=LR0 * LRF, **kwargs)
    ref = []
    for value in metrics:
        ref.append(opt.param_groups[0]["lr"])
        ref_sched.step(value)
    assert_close(plateau_epoch_lrs(metrics, lrf=LRF, **kwargs), ref)


def test_plateau_state_round_trip():
    a = schedules.Plateau(10, lrf=0.01, factor=0.5, patience=0)
    for value in (1.0, 1.0, 1.0):
        a.observe({"val/loss": value})
    b = schedules.Plateau(10, lrf=0.01, factor=0.5, patience=0)
    b.load_state_dict(a.state_dict())
    assert b(0) == a(0) == 0.25 and b.state_dict() == a.state_dict()


def test_momentum_warmup_rises_to_the_optimizer_momentum():
    plan = make_plan(schedules.Cosine, 20, 5, 4, 0.1, "step", warmup_momentum=0.8, lrf=0.01)
    assert [plan.momentum(k, 0.9) for k in range(6)] == pytest.approx([0.8, 0.825, 0.85, 0.875, 0.9, 0.9])


def test_ultralytics_recipe_hand_worked():
    """4 epochs of 5 steps, warmup 1 epoch (W = 5), lr0 0.01, lrf 0.01, warmup_bias_lr 0.1, linear.
    Epochs count from 0, warmup included: lf(t) = 0.01 + 0.99 * (1 - t/3) for t = 0..3; warmup
    rises from 0.1*lr0 (bias: falls from 0.1) toward lr0 * lf(epoch)."""
    plan = make_plan(schedules.Ultralytics, 20, 5, 5, 0.1, "epoch", lrf=0.01)
    weights = [plan.group_lr(k, {"initial_lr": 0.01}) for k in range(20)]
    bias = [plan.group_lr(k, {"initial_lr": 0.01, "warmup_start_lr": 0.1}) for k in range(20)]
    assert_close(weights[:5], [0.01 * (0.1 + 0.9 * k / 5) for k in range(5)], tol=1e-15)
    assert_close(bias[:5], [0.1 + (0.01 - 0.1) * k / 5 for k in range(5)], tol=1e-15)  # falls 0.1 -> lr0
    expected = [0.01 * (0.01 + 0.99 * 2 / 3), 0.01 * (0.01 + 0.99 / 3), 0.01 * 0.01]
    assert_close(weights[5:], [v for v in expected for _ in range(5)], tol=1e-15)
    assert bias[5:] == weights[5:]


def test_ultralytics_warmup_rises_toward_the_current_epoch_value():
    """W = 10 steps over 2 epochs of 5: in epoch 1 the target is lf(1) = 0.01 + 0.99 * (1 - 1/3)."""
    plan = make_plan(schedules.Ultralytics, 20, 5, 10, 0.1, "epoch", lrf=0.01)
    lf1 = 0.01 + 0.99 * (2 / 3)
    assert_close([plan(k) for k in range(5, 10)], [0.1 + (lf1 - 0.1) * k / 10 for k in range(5, 10)], tol=1e-15)


def test_ultralytics_cos_lr():
    lrs = plan_lrs(schedules.Ultralytics, 5, lrf=0.01, cos_lr=True)
    assert_close(lrs, [0.1 * (0.01 + 0.99 * (1 + math.cos(math.pi * t / 4)) / 2) for t in range(5)])


@pytest.mark.parametrize("cls", [schedules.Cosine, schedules.Linear, schedules.Poly, schedules.Ultralytics])
def test_decay_over_a_single_unit_holds_lr0_and_warns(cls, caplog):
    """One epoch with interval=epoch (or warmup T-1 steps): nothing to decay over, LR stays lr0."""
    with caplog.at_level("WARNING"):
        sched = cls(total_units=1, lrf=0.01)
    assert sched(0) == 1.0 and "single unit" in caplog.text
    lrs = plan_lrs(cls, 8, spe=8, interval="epoch", lrf=0.01)
    assert lrs == [LR0] * 8


@pytest.mark.parametrize("make,text", [
    (lambda: schedules.MultiStep(4, milestones=[0.5, 0.99]), "at or after the run's end"),
    (lambda: schedules.Step(1, step_size=0.3), "never drop"),
    (lambda: schedules.Cyclic(32, lrf=0.01, step_size_up=50), "only rises"),
])
def test_schedules_that_would_do_nothing_in_this_run_warn(make, text, caplog):
    with caplog.at_level("WARNING"):
        make()
    assert text in caplog.text


@pytest.mark.parametrize("make,key", [
    (lambda: schedules.MultiStep(10, milestones=[5, 12]), r"scheduler.milestones=\[5, 12\]: \[12\] past the end"),
    (lambda: schedules.Step(10, step_size=10), "scheduler.step_size=10: not shorter than the run"),
    (lambda: schedules.CosineRestarts(10, lrf=0.01, T_0=11), "scheduler.T_0=11: the first cycle is longer"),
    (lambda: schedules.Step(10, step_size=2.5), "scheduler.step_size=2.5: use a whole number"),
])
def test_durations_in_units_that_do_not_fit_the_run_are_refused(make, key):
    with pytest.raises(ConfigError, match=key):
        make()


def test_fractions_of_the_run_hand_worked():
    """10 units: milestones [0.5, 0.75] -> [5, 8] (7.5 rounds to even), step_size 0.3 -> 3, T_0 0.2 -> 2."""
    assert schedules.MultiStep(10, milestones=[0.5, 0.75]).milestones == [5, 8]
    assert schedules.Step(10, step_size=0.3).step_size == 3
    assert schedules.CosineRestarts(10, lrf=0.0, T_0=0.2).T_0 == 2


@pytest.mark.parametrize("scheduler,warns", [("ultralytics", False), ("cosine", True)])
def test_only_the_plan_that_runs_warns_of_a_single_unit(tmp_path, caplog, scheduler, warns):
    """40 samples / batch 8 = 5 steps per epoch, 2 epochs, warmup 1 epoch, LR per epoch.
    Ultralytics counts epochs from 0, warmup included: epoch 1 (steps 5-9) is its last,
    lr0*lrf = 1e-4, and no single-unit warning. Cosine's main phase after warmup is 1 epoch:
    it holds lr0 there and says so."""
    import logging

    from tests.helpers import TINY, build_run

    caplog.set_level(logging.WARNING, logger="framework")
    plan = build_run(tmp_path, *TINY, f"scheduler={scheduler}", "scheduler.interval=epoch", "dataset.train_size=40",
                     "batch_size=8", "epochs=2", "warmup_epochs=1", "lr0=0.01", "lrf=0.01", "device=cpu").plan
    assert (plan.total_steps, plan.warmup_steps) == (10, 5)
    after_warmup = [0.01 * plan(k) for k in range(5, 10)]
    assert after_warmup == pytest.approx([1e-4] * 5 if scheduler == "ultralytics" else [0.01] * 5)
    assert ("single unit" in caplog.text) == warns
