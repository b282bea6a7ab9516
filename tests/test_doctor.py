"""The LR doctor (framework.doctor): update ratios measured by the trainer, verdicts on hand-built
runs worked out from the documented rules, the live warning, the summary, the CLI and the sweep
bracket."""
from __future__ import annotations

import functools
import json
import logging
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from framework.doctor import diagnose
from framework.doctor.config import check_lr_doctor_args
from framework.doctor.live import LiveDoctor
from framework.doctor.signals import interval_steps
from framework.doctor.sweep import bracket, bracket_line
from tests.helpers import TINY, lines, read_csv, train_in_process

# -- update ratios, measured by the trainer --------------------------------------------------------


def two_group_trainer(run_dir, every):
    """nn.Linear(2, 1) (weight [0.1, -0.2], bias 0.05), plain SGD lr 0.1 with the weight and the
    bias in two groups (``decay``, ``bias``), mean squared error, batches of one sample:
    x = (1, 2), (0, 1), (2, -1); y = 1, 0, 2 (T = 3 steps)."""
    from framework.schedules import Constant, LRPlan
    from framework.tasks import Regression
    from framework.trainer import Trainer

    run_dir.mkdir(parents=True, exist_ok=True)
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.1, -0.2]]))
        model.bias.fill_(0.05)
    opt = torch.optim.SGD([{"params": [model.weight], "name": "decay"}, {"params": [model.bias], "name": "bias"}],
                          lr=0.1)
    x, y = torch.tensor([[1.0, 2.0], [0.0, 1.0], [2.0, -1.0]]), torch.tensor([1.0, 0.0, 2.0])
    loaders = (DataLoader(TensorDataset(x, y), batch_size=1), DataLoader(TensorDataset(x, y), batch_size=3))
    return Trainer(model, opt, LRPlan(Constant(3), 3, 3), loaders, run_dir, torch.device("cpu"),
                   task=Regression(num_classes=1), progress_bar=False,
                   lr_doctor={"update_ratio_every_n_steps": every, "warn": False})


def hand_ratios():
    """‖w_(k+1) - w_k‖ / ‖w_k‖ of each group at each of the 3 SGD steps, by hand:
    w <- w - 0.1 * 2 * (w.x + b - y) * x, b <- b - 0.1 * 2 * (w.x + b - y)."""
    w, b = [0.1, -0.2], 0.05
    out = []
    for x, y in (([1.0, 2.0], 1.0), ([0.0, 1.0], 0.0), ([2.0, -1.0], 2.0)):
        r = w[0] * x[0] + w[1] * x[1] + b - y
        dw, db = [-0.2 * r * x[0], -0.2 * r * x[1]], -0.2 * r
        out.append((math.hypot(*dw) / math.hypot(*w), abs(db) / abs(b)))
        w, b = [w[0] + dw[0], w[1] + dw[1]], b + db
    return out


@pytest.mark.parametrize("every", [1, 2])
def test_update_ratios_in_steps_csv_equal_the_hand_values(tmp_path, every):
    trainer = two_group_trainer(tmp_path, every)
    trainer.fit()
    rows = read_csv(tmp_path / "steps.csv")
    assert list(rows[0])[-2:] == ["update_ratio", "update_ratio/bias"]
    # step 0 by hand: residual 0.1 - 0.4 + 0.05 - 1 = -1.25, so dw = 0.25 (1, 2), db = 0.25: ratios
    # 0.25 sqrt(5) / sqrt(0.05) = 2.5 (weight) and 0.25 / 0.05 = 5 (bias)
    assert (float(rows[0]["update_ratio"]), float(rows[0]["update_ratio/bias"])) == pytest.approx((2.5, 5.0), rel=1e-5)
    for k, (row, (weight, bias)) in enumerate(zip(rows, hand_ratios())):
        if k % every:
            assert row["update_ratio"] == row["update_ratio/bias"] == ""  # not sampled
        else:
            assert float(row["update_ratio"]) == pytest.approx(weight, rel=1e-5)
            assert float(row["update_ratio/bias"]) == pytest.approx(bias, rel=1e-5)


def test_ratios_off_leave_steps_csv_as_it_was(tmp_path):
    trainer = two_group_trainer(tmp_path, 0)
    trainer.fit()
    assert "update_ratio" not in read_csv(tmp_path / "steps.csv")[0]


# -- verdicts on hand-built runs -------------------------------------------------------------------
# T = 20 steps: intervals of max(5, ceil(20 / 20)) = 5 steps, 4 of them. Group 0's first-step update
# ratio at lr0 (lr 0.1 here) is given per case; judged as AdamW runs (judge): the adaptive family's
# healthy band 10^(-1.20 +- 0.75) = 0.011-0.35.

judge = functools.partial(diagnose, optimizer="AdamW")


def rows_of(losses, ratio0=None, lr=0.1, **extra):
    """steps.csv-like rows: constant LR, the given losses, ``ratio0`` on step 0 only."""
    rows = [{"step": k, "lr": lr, "loss": v, "grad_norm": 1.0, "update_ratio": ""} for k, v in enumerate(losses)]
    if ratio0 is not None:
        rows[0]["update_ratio"] = ratio0
    for k, values in extra.items():
        for row, value in zip(rows, values):
            row[k] = value
    return rows


def test_the_interval_length():
    assert interval_steps(20) == 5 and interval_steps(100) == 5 and interval_steps(368) == 19  # ceil(368 / 20)


def test_a_steadily_falling_loss_with_a_healthy_first_step_is_ok():
    losses = [2.3 * 0.9 ** k for k in range(20)]
    result = judge(rows_of(losses, ratio0=0.03), 20)
    # no loss rule: it fell in every interval, by 1 - mean(0.9^15..0.9^19) = 80%; ratio 0.03 = 10^-1.52: in the band
    assert result["evidence"]["loss_drop_frac"] == pytest.approx(1 - sum(0.9 ** k for k in range(15, 20)) / 5)
    assert (result["verdict"], result["factor"]) == ("ok", None)
    assert result["evidence"]["rose"] == 0 and result["evidence"]["judged_rises"] == 3


def test_a_noisy_flat_loss_is_too_high():
    # every interval: 2.0, 2.6, 1.4, 2.6, 1.4 (mean 2.0 = the start: drop 0 < 10%); around its least-squares
    # line (slope -0.12) the residuals are -0.24, 0.48, -0.6, 0.72, -0.36: spread sqrt(1.296 / 3) / 2.0 = 0.329 > 0.25
    losses = [2.0, 2.6, 1.4, 2.6, 1.4] * 4
    result = judge(rows_of(losses, ratio0=0.03), 20)
    assert result["evidence"]["noise"] == pytest.approx(math.sqrt(1.296 / 3) / 2.0)
    assert (result["verdict"], result["factor"]) == ("too_high", 0.3)
    assert "flat" in result["reason"] and "consider lr0≈0.03" in result["reason"]


def test_an_oscillating_rising_loss_is_too_high():
    # interval means 2.0, 2.2, 2.1, 2.4 from a start of 3.0: it rose in 2 of the 3 intervals compared (> 1/2)
    losses = [3.0, 1.7, 2.3, 1.7, 1.3] + [2.5, 1.9, 2.5, 1.9, 2.2] + [2.4, 1.8, 2.4, 1.8, 2.1] + [2.7, 2.1, 2.7, 2.1, 2.4]
    result = judge(rows_of(losses, ratio0=0.03), 20)
    assert [round(v, 6) for v in (result["evidence"]["loss_start"], result["evidence"]["loss_end"])] == [3.0, 2.4]
    assert (result["evidence"]["rose"], result["evidence"]["judged_rises"]) == (2, 3)
    assert (result["verdict"], result["factor"]) == ("too_high", 0.3)
    assert "rose in 2 of 3 intervals" in result["reason"]
    # the same with a first-step ratio of 3.0 (log 0.48), 1.68 decades over the band's centre (3.36 half-decades,
    # 3 to bring it back): x0.03
    assert judge(rows_of(losses, ratio0=3.0), 20)["factor"] == 0.03


def test_a_nan_loss_is_diverged_and_a_loss_at_or_below_zero_is_judged_by_the_ratio_only():
    losses = [2.3 * 0.9 ** k for k in range(8)] + [math.nan] * 12  # "nan" cells, as the CSV holds them
    assert judge(rows_of([str(v) for v in losses], ratio0=0.03), 20)["verdict"] == "diverged"
    # a loss that starts at 0 (or goes negative: a log-likelihood) has no relative drop: the ratio decides
    assert judge(rows_of([0.0] * 20, ratio0=0.03), 20)["verdict"] == "ok"
    assert judge(rows_of([-1.0 - 0.1 * k for k in range(20)], ratio0=1e-4), 20)["verdict"] == "too_low"


def test_prodigy_runs_are_not_judged_by_their_ratio():
    # Prodigy's step is d x lr (steps.csv's d column): lr0 is not its knob; a falling loss is then unsure
    losses = [2.3 * 0.9 ** k for k in range(20)]
    result = judge(rows_of(losses, ratio0=1e-6, d=[1e-6] * 20), 20)
    assert result["verdict"] == "unsure" and "Prodigy" in result["reason"]


def test_a_diverging_loss_is_diverged():
    losses = [2.3, 2.5, 3.1, 5.0, 9.7, 30.0, 1e3, math.inf] + [math.nan] * 12
    result = judge(rows_of(losses, ratio0=0.03), 20)
    assert (result["verdict"], result["factor"]) == ("diverged", 0.1)
    assert judge(rows_of([2.3] * 20, ratio0=0.03), 20, status="diverged")["verdict"] == "diverged"  # the guard's


def test_a_slow_quiet_loss_is_too_low():
    # 2.3 - 0.005 k: the last interval's mean 2.3 - 0.005 * 17 = 2.215, 3.7% below the start; on its line: spread 0
    losses = [2.3 - 0.005 * k for k in range(20)]
    result = judge(rows_of(losses), 20)
    assert result["evidence"]["loss_drop_frac"] == pytest.approx(0.085 / 2.3)
    assert (result["verdict"], result["factor"]) == ("too_low", 3.0)
    # with a first-step ratio of 1e-4 (2.8 decades under the centre): 5.6 half-decades, clipped to 4: x100
    assert judge(rows_of(losses, ratio0=1e-4), 20)["factor"] == 100.0


def test_one_uptick_of_a_flat_loss_is_not_a_rise():
    # lr0 1e-5 on a tiny run (found by a user): two intervals, means 2.35902 then 2.3604 (up 0.06%, one comparison);
    # the loss is flat (within 10% of its start) and quiet, the first step 1.1e-6: too low x100, not too high
    losses = [2.3593, 2.3590, 2.3588, 2.3591, 2.3589, 2.3600, 2.3606, 2.3604, 2.3608, 2.3602]
    result = judge(rows_of(losses, ratio0=1.1e-6), 10)
    assert (result["evidence"]["rose"], result["evidence"]["judged_rises"]) == (1, 1)
    assert (result["verdict"], result["factor"]) == ("too_low", 100.0)


def test_a_flat_quiet_loss_after_a_huge_first_step_is_stuck_not_slow():
    # the loss sits at 2.3 (drop 0, spread 0) after a first step with ratio 3.0 (1.68 decades over the centre):
    # too high, x0.03 (3 half-decades), not too low
    result = judge(rows_of([2.3] * 20, ratio0=3.0), 20)
    assert (result["verdict"], result["factor"]) == ("too_high", 0.03) and "stuck" in result["reason"]
    assert judge(rows_of([2.3] * 20, ratio0=0.03), 20)["verdict"] == "too_low"  # the same loss, a healthy step


@pytest.mark.parametrize("ratio, verdict, factor", [
    (0.5, "too_high", 0.1),  # log10 0.5 = -0.30: 0.90 decade over the centre -1.20, 1.8 -> 2 half-decades -> x0.1
    (0.15, "ok", None),  # -0.82: 0.38 decade over, inside the half-width 0.75
    (0.005, "too_low", 10.0),  # -2.30: 1.10 under -> 2.2 -> 2 half-decades -> x10
    (0.002, "too_low", 30.0),  # -2.699: 1.499 under -> 2.998 -> 3 half-decades -> x30
])
def test_a_falling_loss_is_judged_by_the_first_steps_ratio(ratio, verdict, factor):
    losses = [2.3 * 0.9 ** k for k in range(20)]
    result = judge(rows_of(losses, ratio0=ratio), 20)
    assert (result["verdict"], result["factor"]) == (verdict, factor)


def test_the_first_ratio_is_scaled_to_the_peak_lr():
    # warmup: step 0 at lr 0.01 of a peak 0.1 had ratio 0.05 -> 0.5 at lr0: too high (log -0.30, 0.90 over)
    losses = [2.3 * 0.9 ** k for k in range(20)]
    rows = rows_of(losses, ratio0=0.05, lr=0.1)
    rows[0]["lr"] = 0.01
    result = judge(rows, 20)
    assert result["evidence"]["update_ratio"]["0"] == pytest.approx(0.5)
    assert result["verdict"] == "too_high"
    at_base = judge(rows, 20, base_lrs={"decay": 0.05})  # the run's own base LR: 0.05 * 0.05 / 0.01 = 0.25
    assert at_base["evidence"]["update_ratio"]["decay"] == pytest.approx(0.25) and at_base["verdict"] == "ok"


def test_a_head_at_ten_times_the_body_lr_gets_its_own_verdict():
    losses = [2.3 * 0.9 ** k for k in range(20)]
    rows = rows_of(losses, ratio0=0.03, **{"lr/head": [1.0] * 20, "update_ratio/head": [0.5] + [""] * 19,
                                           "lr/no_decay": [0.1] * 20, "update_ratio/no_decay": [0.001] + [""] * 19})
    result = judge(rows, 20)
    assert result["verdict"] == "ok"  # the body
    assert result["groups"] == {"head": {"verdict": "too_high", "factor": 0.1, "lr": 1.0, "update_ratio": 0.5}}
    # no_decay shares the body's LR: not judged apart (its small ratio is that of biases and norms)


def test_too_few_intervals_is_unsure_and_upto_judges_what_was_known():
    losses = [2.3 * 0.9 ** k for k in range(20)]
    assert judge(rows_of(losses, ratio0=0.03)[:9], 20)["verdict"] == "unsure"  # one full interval
    assert judge(rows_of(losses, ratio0=0.5), 20, upto=10)["verdict"] == "too_high"  # 2 intervals: enough
    assert judge(rows_of(losses, ratio0=0.5), 20, upto=10)["at_step"] == 9


def test_a_pbt_trial_whose_lr0_changed_is_not_judged_by_its_first_step():
    """A PBT trial that went on from another trial's run at another lr0: its first step ran at the
    first segment's lr0, so its ratio says nothing of the last one; a falling loss is then unsure."""
    from framework.doctor import lr0_changes

    lineage = [{"trial": 1, "from_step": 0, "to_step": 4, "params": {"lr0": 0.0012}},
               {"trial": 0, "from_step": 4, "to_step": None, "params": {"lr0": 0.52}}]
    note = lr0_changes({"tune": {"lineage": lineage}})
    assert note == "PBT changed lr0 during the run (0.0012 from step 0, 0.52 from step 4)"
    assert lr0_changes({"tune": {"lineage": lineage[:1]}}) is None  # its own line: one lr0
    assert lr0_changes({"tune": {"lineage": [lineage[0], {**lineage[1], "params": {"lr0": 0.0012}}]}}) is None
    assert lr0_changes({}) is None
    losses = [2.3 * 0.9 ** k for k in range(20)]
    result = diagnose(rows_of(losses, ratio0=0.5), 20, optimizer="SGD", lr0_changed=note)
    assert (result["verdict"], result["factor"]) == ("unsure", None)
    assert result["reason"] == f"the loss fell; the first step's update ratio is not judged ({note})"
    # the loss rules still judge it: a noisy flat loss is too high
    assert diagnose(rows_of([2.0, 2.6, 1.4, 2.6, 1.4] * 4, ratio0=0.03), 20, lr0_changed=note)["verdict"] == "too_high"
    # a flat loss above its start says so
    assert "(2% above its start)" in diagnose(rows_of([2.3] + [2.35] * 19), 20, lr0_changed=note)["reason"]


def test_the_band_is_the_optimizer_familys():
    """The same falling loss and first-step ratio judged for SGD (centre 10^-1.85), AdamW (10^-1.20)
    and an optimizer of neither family (RAdam, or none named: 10^-1.50); half-width 0.75."""
    losses = [2.3 * 0.9 ** k for k in range(20)]
    # 0.005 = 10^-2.30: SGD 0.45 under (ok); AdamW 1.10 under (2.2 -> x10); other 0.80 under (1.6 -> x10)
    low = {name: diagnose(rows_of(losses, ratio0=0.005), 20, optimizer=name) for name in ("SGD", "AdamW", "RAdam", None)}
    assert {n: (r["verdict"], r["factor"]) for n, r in low.items()} == {
        "SGD": ("ok", None), "AdamW": ("too_low", 10.0), "RAdam": ("too_low", 10.0), None: ("too_low", 10.0)}
    assert {n: r["evidence"]["optimizer_family"] for n, r in low.items()} == {
        "SGD": "sgd", "AdamW": "adaptive", "RAdam": None, None: None}
    assert low["SGD"]["evidence"]["ratio_band"] == pytest.approx([10 ** -2.6, 10 ** -1.1])
    # 0.2 = 10^-0.70: SGD 1.15 over (2.3 -> x0.1); AdamW 0.50 over (ok); other 0.80 over (1.6 -> x0.1)
    high = {name: diagnose(rows_of(losses, ratio0=0.2), 20, optimizer=name) for name in ("SGD", "AdamW", "Lion", None)}
    assert {n: (r["verdict"], r["factor"]) for n, r in high.items()} == {
        "SGD": ("too_high", 0.1), "AdamW": ("ok", None), "Lion": ("ok", None), None: ("too_high", 0.1)}


# -- live warning ----------------------------------------------------------------------------------


def test_the_live_doctor_warns_once_after_two_too_high_judgements(caplog):
    # judged at steps 5 (one interval: unsure), 10 (too high), 15 (too high again: the warning), 20 (said already)
    doctor = LiveDoctor()
    doctor.start(20)
    losses = [2.0, 2.6, 1.4, 2.6, 1.4] * 4  # flat and noisy
    with caplog.at_level(logging.WARNING, logger="framework.doctor"):
        for row in rows_of(losses, ratio0=0.03):
            doctor.observe([row])
    assert len(doctor.warnings) == 1 and doctor.warnings[0].startswith("LR doctor at step 15: the loss is flat")
    assert "consider lr0≈0.03" in doctor.warnings[0]
    assert [r.getMessage() for r in caplog.records] == doctor.warnings


def test_the_live_doctor_judges_at_the_base_lr_and_forgets_rolled_back_steps():
    # warmup: step 0 at lr 0.01 with ratio 0.004; judged at the base LR 0.1: 0.04, healthy. Judged at the highest
    # LR seen (0.01 for the first 10 steps) it would be 0.004: too low
    doctor = LiveDoctor()
    doctor.start(20, {"decay": 0.1})
    rows = rows_of([2.3 * 0.9 ** k for k in range(20)], ratio0=0.004, lr=0.1)
    for k, row in enumerate(rows[:10]):
        row["lr"] = 0.01 * (k + 1)
        doctor.observe([row])
    assert doctor.warnings == [] and doctor._last == "ok"
    doctor.observe([{"step": 10, "lr": 0.1, "loss": math.inf}])  # a diverging step, then a rollback to step 8
    doctor.forget_from(8)
    assert sorted(doctor.rows) == list(range(8)) and doctor._next == 10


def test_after_lr0_auto_a_too_high_warning_names_the_range_tests_other_suggestions():
    doctor = LiveDoctor(lr0_auto={"chosen": "steepest", "lr0": 0.1,
                                  "suggestions": {"steepest": 0.1, "valley": 0.02, "minimum": 0.5}})
    doctor.start(20)
    for row in rows_of([2.0, 2.6, 1.4, 2.6, 1.4] * 4, ratio0=0.03):
        doctor.observe([row])
    assert doctor.warnings[0].endswith("; lr0=auto chose steepest 0.1: the range test also suggested valley 0.02")


def test_a_run_records_its_diagnosis_and_prints_it(tmp_path, capsys):
    train_in_process(tmp_path, *TINY, "epochs=4", "lr0=3")
    summary = json.loads((tmp_path / "summary.json").read_text())
    diagnosis = summary["lr_diagnosis"]
    steps = read_csv(tmp_path / "steps.csv")
    assert diagnosis["at_step"] == int(steps[-1]["step"]) == 15 and diagnosis["evidence"]["total_steps"] == 16
    assert diagnosis["evidence"]["loss_start"] == pytest.approx(float(steps[0]["loss"]))
    # the first step's ratio at lr0, from the file: step 0 ran at lr0 (no warmup)
    assert float(steps[0]["lr"]) == 3.0
    assert diagnosis["evidence"]["update_ratio"]["decay"] == pytest.approx(float(steps[0]["update_ratio"]))  # group 0
    # by hand from the file: the step-0 ratio at lr0 3 against SGD's band 10^(-1.85 +- 0.75) (the run's optimizer,
    # recorded in summary.json); its first step at lr 3 moves the weights by far more than 1/10 of their norm: too high
    assert summary["optimizer"] == "SGD" and diagnosis["evidence"]["optimizer_family"] == "sgd"
    ratio = float(steps[0]["update_ratio"]) * 3.0 / float(steps[0]["lr"])
    assert math.log10(ratio) > -1.85 + 0.75
    assert diagnosis["verdict"] in ("too_high", "diverged") and diagnosis["factor"] <= 0.3
    out = capsys.readouterr().out
    assert f"LR doctor: {diagnosis['reason']}" in out
    table = read_csv(tmp_path / "lr_doctor.csv")  # T = 16: intervals of 5 steps, 3 of them
    assert [(int(r["first"]), int(r["last"])) for r in table] == [(0, 4), (5, 9), (10, 14)]
    assert float(table[1]["loss"]) == pytest.approx(sum(float(r["loss"]) for r in steps[5:10]) / 5)


def test_a_replayed_schedule_is_judged_at_its_own_lrs_and_advised_to_scale_them(tmp_path, capsys):
    """A run at lr0 3e-4 exported (its applied LRs) and replayed with lr0 left at its default 0.01:
    the replay applies the same LRs, so the doctor judges it as the recorded run (the same verdict
    and factor, from the first step's ratio at the same peak LR, not at lr0); its advice scales the
    file's LRs, the table says ``LRs x``, summary.json names the file."""
    from framework.schedules.piecewise import export_schedule

    recorded = tmp_path / "recorded"
    train_in_process(recorded, *TINY, "epochs=4", "lr0=0.0003", "warmup_epochs=0", "warmup_steps=null")
    reference = json.loads((recorded / "summary.json").read_text())["lr_diagnosis"]
    trace = export_schedule(recorded, tmp_path / "trace.yaml")
    capsys.readouterr()
    run = tmp_path / "run"
    train_in_process(run, *TINY, "epochs=4", "scheduler=piecewise", f"scheduler.path={trace}", "warmup_epochs=0",
                     "warmup_steps=null")
    summary = json.loads((run / "summary.json").read_text())
    diagnosis = summary["lr_diagnosis"]
    assert summary["lr0"] == 0.01 and summary["schedule_file"] == str(trace.resolve())
    assert [float(r["lr"]) for r in read_csv(run / "steps.csv")] == pytest.approx(
        [float(r["lr"]) for r in read_csv(recorded / "steps.csv")], rel=1e-12, abs=0)  # the replay's contract
    assert reference["verdict"] == "too_low" and reference["factor"] >= 3 and reference["factor_of"] == "lr0"
    assert (diagnosis["verdict"], diagnosis["factor"], diagnosis["factor_of"]) == (
        "too_low", reference["factor"], "scheduler.path")
    # the first step's ratio scaled to the peak LR the replay applied (3e-4), not to its lr0 (0.01: 33x more)
    assert diagnosis["evidence"]["update_ratio"] == pytest.approx(reference["evidence"]["update_ratio"], rel=1e-9)
    assert diagnosis["reason"].endswith(f"consider the LRs of {trace.resolve()} x{reference['factor']:g} "
                                        "(lr0 does not change a replay)")
    out = capsys.readouterr().out
    assert f"too_low (LRs x{reference['factor']:g})" in out
    last = float(read_csv(run / "steps.csv")[-1]["lr"])
    assert f"trace.yaml (not lr0) -> {last:.4g}" in out  # the results table's LR row names the file, not lr0 0.01
    # an ordinary run keeps advising lr0
    plain = diagnose(rows_of([2.3 * 0.9 ** k for k in range(20)], ratio0=0.5), 20)
    assert plain["factor_of"] == "lr0" and "consider lr0≈" in plain["reason"]


def test_after_a_real_lr0_auto_run_the_live_warning_names_the_other_suggestions(tmp_path, monkeypatch, caplog):
    # the whole path: the range test of lr0=auto, the run, the live doctor. The band's centre is moved to 10^-3
    # (healthy 10^-3.75 .. 10^-2.25) so that the chosen lr0 on this tiny task reads as too high
    import functools

    from framework.doctor import live, verdict

    monkeypatch.setattr(live, "diagnose", functools.partial(verdict.diagnose, ratio_center_log10=-3.0))
    with caplog.at_level(logging.WARNING, logger="framework.doctor"):
        train_in_process(tmp_path, *TINY, "device=cpu", "epochs=4", "warmup_epochs=0", "lr_finder.num_steps=30",
                         "lr_finder.start_lr=0.01", "lr_finder.end_lr=100", "lr0=auto")
    record = json.loads((tmp_path / "summary.json").read_text())["lr0_auto"]
    steps = read_csv(tmp_path / "steps.csv")
    assert float(steps[0]["lr"]) == record["lr0"] == record["suggestions"][record["chosen"]]
    ratio = float(steps[0]["update_ratio"])  # step 0 runs at lr0: its ratio is the one judged
    assert math.log10(ratio) > -3.0 + 0.75  # above the moved band: too high
    lower = [f"{name} {lr:.3g}" for name, lr in record["suggestions"].items() if lr < record["lr0"]]
    assert lower  # the range test suggested something lower than what it chose
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("LR doctor at step")]
    assert len(said) == 1 and "the LR looks too high" in said[0]
    assert said[0].endswith(f"; lr0=auto chose {record['chosen']} {record['lr0']:.3g}: the range test also "
                            f"suggested {', '.join(lower)}")


def test_the_live_warning_is_a_line_of_its_own_above_the_progress_bar(tmp_path):
    # stdout (log lines) and stderr (the tqdm bar) into one stream, unbuffered as a terminal shows them: the
    # warning is written after the bar's line is cleared, never glued to its end ("...lr=0.521][2026-... LR doctor")
    import os
    import subprocess
    import sys

    from tests.helpers import HANG_GUARD_S, ROOT

    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *TINY, "epochs=4", "lr0=3",
                           "trainer.progress_bar=true", f"hydra.run.dir={tmp_path}"], cwd=ROOT,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"},  # a terminal's stdout is line-buffered
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "step/s" in proc.stdout  # the bar was drawn
    at = proc.stdout.index("LR doctor at step")
    line_start = proc.stdout.rindex("[20", 0, at)  # the log line's timestamp
    assert proc.stdout[line_start - 1] in "\r\n", repr(proc.stdout[line_start - 80:at])


# -- config, sweep bracket --------------------------------------------------------------------------


def test_bad_lr_doctor_keys_are_one_line_each():
    assert check_lr_doctor_args(None) == [] and check_lr_doctor_args({"update_ratio_every_n_steps": 0}) == []
    assert check_lr_doctor_args(5) == ["trainer.lr_doctor=5: must be a mapping {update_ratio_every_n_steps, warn} or "
                                       "null (off), e.g. trainer.lr_doctor.update_ratio_every_n_steps=25"]
    errors = check_lr_doctor_args({"update_ratio_every_n_steps": -1, "warm": True})
    assert errors[0].startswith("trainer.lr_doctor.warm: not a key of the LR doctor (did you mean warn?)")
    assert errors[1] == ("trainer.lr_doctor.update_ratio_every_n_steps=-1: must be an integer >= 0 (steps between "
                         "measured update ratios; 0 = never)")
    assert check_lr_doctor_args({"warn": "yes"}) == ["trainer.lr_doctor.warn=yes: must be true or false"]


def test_the_sweep_bracket():
    jobs = [(1e-4, "too_low"), (1e-3, "too_low"), (1e-2, "ok"), (3e-2, "ok"), (0.1, "too_high"), (1.0, "diverged"),
            (None, "ok"), (0.3, None)]
    found = bracket(jobs)
    assert found == {"too_low_upto": 1e-3, "too_high_from": 0.1, "ok": [1e-2, 3e-2], "conflicting": []}
    assert bracket_line(found) == "lr0: too low at and below 0.001; right from 0.01 to 0.03; too high at and above 0.1"
    mixed = bracket([(1e-3, "too_high"), (1e-2, "too_low"), (0.1, "too_high")])
    assert mixed["conflicting"] == [1e-3, 1e-2] and mixed["too_high_from"] == 0.1 and mixed["too_low_upto"] is None


def test_the_command_line_diagnoses_a_run_and_a_sweep(tmp_path, capsys):
    from framework.doctor.__main__ import main

    run = tmp_path / "sweep" / "0"
    train_in_process(run, *TINY, "epochs=4", "lr0=3")
    (tmp_path / "sweep" / "multirun.yaml").write_text("hydra: {}\n")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("lr0: 3.0\n")  # what makes it a job folder of the sweep
    capsys.readouterr()
    assert main([str(run)]) == 0
    out = lines(capsys.readouterr().out)
    summary = json.loads((run / "summary.json").read_text())
    assert out[0] == f"{run}: {summary['lr_diagnosis']['verdict']} (lr0 x{summary['lr_diagnosis']['factor']:g})"
    assert (run / "lr_doctor.png").stat().st_size > 0 and (run / "lr_doctor.csv").is_file()
    start = summary["lr_diagnosis"]["evidence"]["loss_start"]
    assert f"  loss_start         {start:.4g}  (loss of step 0)" in out  # what each figure is, said
    assert any(line.startswith("  loss_max") and line.endswith("(highest interval mean loss)") for line in out)
    assert main([str(tmp_path / "sweep")]) == 0
    out = lines(capsys.readouterr().out)
    assert out[1].split()[:3] == ["0", "3", "completed"] and out[-1].startswith("lr0: too high at and above 3")
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path}: neither a run folder (steps.csv) nor a sweep folder")
    assert main([str(tmp_path / "gone")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'gone'}: no such folder; pass a run folder")
    assert main([str(run / "steps.csv")]) == 0  # the file itself: its run folder
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "steps.csv").write_text("a,b\n1,2\n")
    capsys.readouterr()
    assert main([str(foreign)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {foreign / 'steps.csv'}: not a run's step log")


def test_gradient_spikes_are_counted_among_the_measured_steps():
    """40 steps, intervals of max(5, ceil(40/20)) = 5 steps. Norms 1.0 with 20.0 at step 22 (above
    10 x the median 1.0 of the earlier steps' norms: 1 spike, in interval 4) and 5.0 at step 31
    (not above 10): 1 spike in all. Measured on every 10th step only (steps 0, 10, 20, 30; step 20
    at 20.0): intervals 0, 2, 4, 6 have norms, interval 4 one spike, the others none (empty in
    lr_doctor.csv). Never measured: no spike count at all."""
    from framework.doctor.signals import interval_rows, intervals

    losses = [2.3 - 0.01 * k for k in range(40)]
    every = [1.0] * 40
    every[22], every[31] = 20.0, 5.0
    ivs = intervals(rows_of(losses, grad_norm=every), 40)
    assert [iv.spikes for iv in ivs] == [0, 0, 0, 0, 1, 0, 0, 0]
    assert judge(rows_of(losses, ratio0=0.05, grad_norm=every), 40)["evidence"]["grad_spikes"] == 1
    sampled = [("" if k % 10 else 1.0) for k in range(40)]
    sampled[20] = 20.0
    ivs = intervals(rows_of(losses, grad_norm=sampled), 40)
    assert [iv.spikes for iv in ivs] == [0, None, 0, None, 1, None, 0, None]
    assert [r["grad_spikes"] for r in interval_rows(ivs)] == [0, "", 0, "", 1, "", 0, ""]
    assert judge(rows_of(losses, ratio0=0.05, grad_norm=sampled), 40)["evidence"]["grad_spikes"] == 1
    never = judge(rows_of(losses, ratio0=0.05, grad_norm=[""] * 40), 40)
    assert never["evidence"]["grad_spikes"] is None
