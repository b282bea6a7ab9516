"""PyTorch's LR schedulers (and a user's own) through the adapter, ``scheduler=torch``: the plan and
``steps.csv`` equal PyTorch's class stepped by hand on a real optimizer (1e-12), with warmup and
gradient accumulation; resume; refusals are one line naming the key and the fix."""
from __future__ import annotations

import copy
import functools

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from torch.optim import lr_scheduler as tls

from framework.config import validate
from framework.errors import ConfigError
from framework.schedules.plan import build_plan
from tests.helpers import TINY, compose_cfg, lines, read_csv, run_cli_in_process, train_in_process

LR0 = 0.1


class HalvingLR(tls.LRScheduler):
    """A user's own scheduler: halve the LR every ``every`` units."""

    def __init__(self, optimizer, every: int, last_epoch: int = -1):
        self.every = every
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [base * 0.5 ** (self.last_epoch // self.every) for base in self.base_lrs]


def reference(make, T: int, spe: int, W: int = 0, s: float = 0.1, interval: str = "step", optimizer: str = "sgd"):
    """LR and momentum of every step ``k`` of a run of ``T`` optimizer steps, worked out with PyTorch:
    warmup by hand (``k < W``: ``lr0*(s + (1-s)*k/W)``, momentum held at the class's first), then
    ``make(optimizer, units)`` on a real optimizer (LR ``lr0``) from ``t = 0``, stepped once per unit:
    every optimizer step, or at each epoch start (``t = k//spe - W//spe``)."""
    units = T - W if interval == "step" else (T - 1) // spe - W // spe + 1
    param = torch.nn.Parameter(torch.zeros(1))
    opt = (torch.optim.SGD([param], lr=LR0, momentum=0.9) if optimizer == "sgd"
           else torch.optim.Adam([param], lr=LR0))
    sched = make(opt, units)
    group = opt.param_groups[0]
    momentum = lambda: group["momentum"] if optimizer == "sgd" else group["betas"][0]  # noqa: E731
    first_momentum, lrs, moms, done = momentum(), [], [], 0
    for k in range(T):
        if k < W:
            lrs.append(LR0 * (s + (1 - s) * k / W))
            moms.append(first_momentum)
            continue
        t = k - W if interval == "step" else k // spe - W // spe
        while done < t:
            opt.step()
            sched.step()
            done += 1
        lrs.append(group["lr"])
        moms.append(momentum())
    return lrs, moms


@functools.lru_cache(maxsize=None)
def _composed(*choices: str):
    return compose_cfg(*choices)


def config(*overrides: str):
    """The config of ``python train.py scheduler=torch lr0=0.1 <overrides>``: composed once per
    choice of group files (composing costs ~0.1 s), the other overrides set on a copy as Hydra
    parses them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = ("scheduler=torch", *(o for o in overrides if o.startswith("scheduler=")))
    cfg = copy.deepcopy(_composed(choices[-1], f"lr0={LR0}"))
    for override in OverridesParser.create().parse_overrides([o for o in overrides if o not in choices]):
        with open_dict(cfg):
            OmegaConf.update(cfg, override.key_or_group, override.value(), force_add=True)
    return cfg


def plan_of(*overrides: str, num_batches: int):
    return build_plan(validate(config(*overrides)), num_batches)


def assert_close(ours, ref, tol=1e-12):
    assert len(ours) == len(ref)
    for k, (a, b) in enumerate(zip(ours, ref)):
        assert abs(a - b) <= tol, f"step {k}: ours {a!r} vs PyTorch {b!r}"


# (overrides, PyTorch's class on the real optimizer, epochs, batches per epoch); absolute LRs in the
# config are multiples of lr0, PyTorch's are absolute
CASES = {
    "exponential_epoch": (["scheduler.name=ExponentialLR", "scheduler.gamma=0.9"],
                          lambda o, n: tls.ExponentialLR(o, gamma=0.9), 6, 5),
    "step_epoch": (["scheduler.name=StepLR", "scheduler.step_size=2", "scheduler.gamma=0.5"],
                   lambda o, n: tls.StepLR(o, step_size=2, gamma=0.5), 7, 3),
    "multistep_step": (["scheduler.name=MultiStepLR", "scheduler.interval=step", "scheduler.milestones=[4,9,15]",
                        "scheduler.gamma=0.3"], lambda o, n: tls.MultiStepLR(o, milestones=[4, 9, 15], gamma=0.3), 4, 6),
    "cosine_step_past_T_max": (["scheduler.name=CosineAnnealingLR", "scheduler.interval=step", "scheduler.T_max=20",
                                "scheduler.eta_min=0.05"],
                               lambda o, n: tls.CosineAnnealingLR(o, T_max=20, eta_min=LR0 * 0.05), 4, 6),
    "onecycle_step": (["scheduler.name=OneCycleLR", "scheduler.interval=step"],  # total_steps and max_lr filled
                      lambda o, n: tls.OneCycleLR(o, max_lr=LR0, total_steps=n), 3, 7),
    "cyclic_step": (["scheduler.name=CyclicLR", "scheduler.interval=step", "scheduler.base_lr=0.1",
                     "scheduler.step_size_up=3", "scheduler.step_size_down=5", "scheduler.mode=triangular2"],
                    lambda o, n: tls.CyclicLR(o, base_lr=LR0 * 0.1, max_lr=LR0, step_size_up=3, step_size_down=5,
                                              mode="triangular2"), 5, 6),
    "warm_restarts_epoch": (["scheduler.name=CosineAnnealingWarmRestarts", "scheduler.T_0=2", "scheduler.T_mult=2",
                             "scheduler.eta_min=0.01"],
                            lambda o, n: tls.CosineAnnealingWarmRestarts(o, T_0=2, T_mult=2, eta_min=LR0 * 0.01), 9, 2),
    "poly_step": (["scheduler.name=PolynomialLR", "scheduler.interval=step", "scheduler.total_iters=10",
                   "scheduler.power=2.0"], lambda o, n: tls.PolynomialLR(o, total_iters=10, power=2.0), 2, 8),
    "user_class_by_name": (["scheduler.name=tests.test_torch_schedulers.HalvingLR", "+scheduler.every=3",
                            "scheduler.interval=step"], lambda o, n: HalvingLR(o, every=3), 2, 9),
}

# extra overrides: warmup (steps or epochs), gradient accumulation (T counts optimizer steps)
VARIANTS = {
    "plain": [],
    "warmup_steps": ["warmup_steps=6", "warmup_start_factor=0.2"],
    "warmup_epochs": ["warmup_epochs=1"],
    "accumulate_2": ["trainer.accumulate_grad_batches=2", "warmup_steps=3"],
}


PAIRS = [(case, "plain") for case in CASES] + [
    (case, variant) for variant, cases in {
        "warmup_steps": ("cosine_step_past_T_max", "onecycle_step", "cyclic_step"),
        "warmup_epochs": ("exponential_epoch", "step_epoch", "warm_restarts_epoch"),
        "accumulate_2": ("onecycle_step", "step_epoch"),
    }.items() for case in cases]


@pytest.mark.parametrize("case,variant", PAIRS)
def test_plan_equals_pytorch_class(case, variant):
    overrides, make, epochs, batches = CASES[case]
    extra = VARIANTS[variant]
    plan = plan_of(*overrides, *extra, f"epochs={epochs}", num_batches=batches)
    accumulate = 2 if "trainer.accumulate_grad_batches=2" in extra else 1
    spe = -(-batches // accumulate)  # a last partial accumulation group steps too
    W = {"warmup_steps": 6, "warmup_epochs": spe, "accumulate_2": 3}.get(variant, 0)
    s = 0.2 if variant == "warmup_steps" else 0.1
    assert (plan.total_steps, plan.steps_per_epoch, plan.warmup_steps) == (epochs * spe, spe, W)
    interval = "step" if "scheduler.interval=step" in overrides else "epoch"  # torch.yaml: epoch
    ref_lrs, ref_moms = reference(make, plan.total_steps, spe, W, s, interval)
    assert_close([LR0 * plan(k) for k in range(plan.total_steps)], ref_lrs)
    if case in ("onecycle_step", "cyclic_step"):  # they cycle the momentum: the plan prescribes PyTorch's
        assert plan.sets_momentum
        assert_close([plan.momentum(k, 0.9) for k in range(plan.total_steps)], ref_moms)
    else:
        assert not plan.sets_momentum


def test_user_class_given_as_target_goes_through_the_adapter():
    """``_target_`` = a user's LRScheduler subclass (over a scheduler file with no keys of its own)."""
    cfg = validate(config("scheduler=constant", "scheduler._target_=tests.test_torch_schedulers.HalvingLR",
                          "+scheduler.every=2", "epochs=3"))
    plan = build_plan(cfg, num_batches=4)
    assert type(plan.schedule).__name__ == "TorchScheduler"
    ref, _ = reference(lambda o, n: HalvingLR(o, every=2), 12, 4)
    assert_close([LR0 * plan(k) for k in range(12)], ref)
    with pytest.raises(ConfigError, match=r"^scheduler.every: required by tests.test_torch_schedulers.HalvingLR; "
                                          r"set it, e.g. \+scheduler.every=<value>$"):
        validate(config("scheduler=constant", "scheduler._target_=tests.test_torch_schedulers.HalvingLR"))


def test_adam_beta1_follows_onecycle_momentum():
    """plan.apply on a real Adam: lr and beta1 of every step equal OneCycleLR's own on Adam."""
    plan = plan_of("scheduler.name=OneCycleLR", "scheduler.interval=step", "epochs=2", num_batches=9)
    ref_lrs, ref_b1 = reference(lambda o, n: tls.OneCycleLR(o, max_lr=LR0, total_steps=n), 18, 9, optimizer="adam")
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=LR0)
    lrs, b1 = [], []
    for k in range(18):
        plan.apply(opt, k)
        lrs.append(opt.param_groups[0]["lr"])
        b1.append(opt.param_groups[0]["betas"][0])
    assert_close(lrs, ref_lrs)
    assert_close(b1, ref_b1)


TORCH_RUN = [*TINY, "dataset.train_size=128", "dataset.val_size=32", "batch_size=16", "trainer.accumulate_grad_batches=2",
             "epochs=2", "warmup_steps=2", "scheduler=torch", "scheduler.name=OneCycleLR", "scheduler.interval=step",
             f"lr0={LR0}", "device=cpu"]


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory):
    """One tiny run: 128 samples / batch 16 = 8 batches, 2 per optimizer step: T = 2 x 4 = 8, W = 2."""
    run_dir = tmp_path_factory.mktemp("torch_run")
    train_in_process(run_dir, *TORCH_RUN)
    return read_csv(run_dir / "steps.csv")


def test_steps_csv_equals_pytorch_class(torch_run):
    ref_lrs, ref_moms = reference(lambda o, n: tls.OneCycleLR(o, max_lr=LR0, total_steps=n), 8, 4, W=2)
    assert [int(r["step"]) for r in torch_run] == list(range(8))
    assert_close([float(r["lr"]) for r in torch_run], ref_lrs)
    assert_close([float(r["momentum"]) for r in torch_run], ref_moms)


def test_stopped_and_resumed_has_the_same_lrs(torch_run, tmp_path):
    train_in_process(tmp_path, *TORCH_RUN, "trainer.stop_after_steps=5")  # mid-epoch 1 (steps 4-7)
    train_in_process(tmp_path / "ignored", *TORCH_RUN, f"resume={tmp_path}")
    columns = ("step", "epoch", "lr", "lr/no_decay", "momentum")
    assert [[r[c] for c in columns] for r in read_csv(tmp_path / "steps.csv")] == \
           [[r[c] for c in columns] for r in torch_run]


REFUSED = [
    (["scheduler.name=CosineAnnealingLR"], "scheduler.T_max: required by torch.optim.lr_scheduler.CosineAnnealingLR; "
                                           "set it, e.g. scheduler.T_max=100 (epochs, as scheduler.interval=epoch)"),
    (["scheduler.name=CosineAnealingLR"], "scheduler.name=CosineAnealingLR: not a class of torch.optim.lr_scheduler "
                                          "(did you mean CosineAnnealingLR?); use one of ConstantLR, "),
    (["scheduler.name=ExponentialLR", "scheduler.gamma=0.9", "+scheduler.gama=1"],
     "scheduler.gama=1: not an argument of torch.optim.lr_scheduler.ExponentialLR (did you mean gamma?); its keys: "
     "gamma"),
    (["scheduler.name=CosineAnnealingLR", "scheduler.T_max=10", "scheduler.gamma=0.5"],
     "scheduler.gamma=0.5: not an argument of torch.optim.lr_scheduler.CosineAnnealingLR; its keys: T_max, eta_min"),
    (["scheduler.name=ReduceLROnPlateau"], "scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau is metric-driven: "
                                           "its LR follows a metric and cannot be computed ahead; use scheduler=plateau"),
    (["scheduler=constant", "scheduler._target_=torch.optim.lr_scheduler.ReduceLROnPlateau"],
     "scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau is metric-driven"),
    (["scheduler.name=LambdaLR"], "scheduler: torch.optim.lr_scheduler.LambdaLR takes a Python function (lr_lambda), "
                                  "which a config file cannot hold; write the policy as a framework.schedules.Schedule"),
    (["scheduler.name=SequentialLR"], "scheduler: torch.optim.lr_scheduler.SequentialLR chains schedulers"),
    (["scheduler.name=ExponentialLR", "scheduler.gamma=0.9", "+scheduler.last_epoch=3"],
     "scheduler.last_epoch=3: not a config key (resume restores the step index, and with it the LR); remove it"),
    (["scheduler.name=ExponentialLR", "scheduler.gamma=0.9", "+scheduler.optimizer=sgd"],
     "scheduler.optimizer=sgd: not a config key (the adapter builds the class on an optimizer of its own)"),
    (["scheduler.name=ExponentialLR", "scheduler.gamma=0.9", "+scheduler.total_units=5"],
     "scheduler.total_units: is passed at run time; remove it from the YAML"),
    (["scheduler=constant", "scheduler._target_=torch.optim.lr_scheduler.CosineAnnealingLR"],  # not "optimizer: required"
     "scheduler.T_max: required by torch.optim.lr_scheduler.CosineAnnealingLR; set it, e.g. +scheduler.T_max=100 "
     "(optimizer steps, as scheduler.interval=step)"),
    (["scheduler._target_=torch.optim.lr_scheduler.StepLR"], "scheduler.name=ConstantLR: scheduler._target_="
                                                             "torch.optim.lr_scheduler.StepLR names the class already"),
    (["scheduler.name=framework.schedules.Cosine"], "scheduler.name=framework.schedules.Cosine: not a subclass of "
                                                    "torch.optim.lr_scheduler.LRScheduler"),
    (["scheduler.name=nopkg_xyz.MyLR"], "scheduler.name=nopkg_xyz.MyLR: cannot import module 'nopkg_xyz'"),
]


@pytest.mark.parametrize("overrides,message", REFUSED, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_refused_before_anything_is_built(overrides, message):
    with pytest.raises(ConfigError) as info:
        validate(config(*overrides))
    assert len(info.value.messages) == 1 and info.value.messages[0].startswith(message), info.value.messages


@pytest.mark.parametrize("overrides,message", [
    (["scheduler.name=ExponentialLR", "scheduler.gamma=-0.5"],
     "scheduler: torch.optim.lr_scheduler.ExponentialLR gives the LR multiplier -0.5 at unit 1; an LR must be finite"),
    (["scheduler.name=OneCycleLR", "scheduler.total_steps=5", "scheduler.interval=step"],
     "scheduler: torch.optim.lr_scheduler.OneCycleLR failed at unit 6 of the run's 20: ValueError: Tried to step"),
    (["scheduler.name=OneCycleLR", "scheduler.max_lr=[1,2]"],
     "scheduler: torch.optim.lr_scheduler.OneCycleLR rejected its arguments: ValueError: max_lr must have the same "
     "length as optimizer.param_groups"),
])
def test_refused_when_the_class_is_stepped(overrides, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        plan_of(*overrides, "epochs=2", num_batches=10)


def test_a_refusal_from_the_command_line_is_one_line_exit_2(tmp_path, capfd):
    code = run_cli_in_process([*TINY, "scheduler=torch", "scheduler.name=CosineAnnealingLR"], tmp_path / "run")
    out, err = capfd.readouterr()
    assert code == 2 and lines(err) == ["error: scheduler.T_max: required by torch.optim.lr_scheduler.CosineAnnealingLR; "
                                        "set it, e.g. scheduler.T_max=100 (epochs, as scheduler.interval=epoch)"], err
    assert "Traceback" not in out + err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, line", [
    # the command: a PyTorch class as the _target_ of the default scheduler file (cosine)
    (["scheduler._target_=torch.optim.lr_scheduler.ExponentialLR", "+scheduler.gamma=0.9"],
     "error: scheduler.lrf=0.01: not an argument of torch.optim.lr_scheduler.ExponentialLR; its keys: gamma (set the "
     "others to null or remove them, or start from scheduler=torch scheduler.name=torch.optim.lr_scheduler."
     "ExponentialLR, a file of PyTorch's arguments)"),
    (["scheduler._target_=torch.optim.lr_scheduler.ExponentialLR", "scheduler.gamma=0.9"],
     "error: scheduler.gamma=0.9: unknown key 'scheduler.gamma'; scheduler has interval, lrf (a new key is added with "
     "+scheduler.gamma=0.9)"),
])
def test_a_torch_class_over_another_scheduler_file_says_how_to_start_from_scheduler_torch(overrides, line, tmp_path,
                                                                                         capfd):
    assert run_cli_in_process([*TINY, *overrides], tmp_path / "run") == 2
    assert lines(capfd.readouterr().err) == [line]


def test_the_fix_it_names_plans_exponential_lr():
    from framework.config import validate
    from framework.schedules.plan import build_plan

    cfg = validate(compose_cfg(*TINY, "scheduler=torch", "scheduler.name=torch.optim.lr_scheduler.ExponentialLR",
                               "scheduler.gamma=0.9", "epochs=3"))
    # 2 batches (one optimizer step each) per epoch, interval=epoch: ExponentialLR's 1, 0.9, 0.81 per epoch
    assert build_plan(cfg, num_batches=2).multipliers() == pytest.approx([1, 1, 0.9, 0.9, 0.81, 0.81], rel=1e-12)
