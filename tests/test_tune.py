"""``python -m framework.tune``: Ray Tune's ASHA decisions against its rule on the values the runs
logged, pruned trials' folders, PBT's exploit continuing from the donor's exact checkpoint with the
new lr0 (the LR contract along each trial's lineage), the exported best schedule, and the one-line
errors (Ray missing, a bad ``tune.`` key)."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import HANG_GUARD_S, ROOT, TINY, read_csv

#: +debug=tiny: 256 training images, batch 64 -> 4 optimizer steps per epoch (conf/dataset/tiny.yaml).
STEPS_PER_EPOCH = 256 // 64


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray (2 CPUs) for the module's searches (``main`` joins a running Ray)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.tune")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def run_tune(argv, cwd, monkeypatch):
    """``python -m framework.tune <argv>`` in this process, from ``cwd``; its exit status."""
    from framework.tune import main

    monkeypatch.chdir(cwd)
    try:
        return main(list(argv))
    except SystemExit as exc:
        return exc.code


def results_in_order(tune_dir):
    """``results.jsonl``: every result, in the order Tune's scheduler judged them."""
    return [json.loads(line) for line in (tune_dir / "results.jsonl").read_text().splitlines()]


def interrupt_search(argv, cwd, tune_dir, ready):
    """``python -m framework.tune <argv>`` in a subprocess, Ctrl-C (SIGINT) as soon as ``ready()``:
    it must end with exit 130 and the line that says how to continue."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "framework.tune", *argv], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + HANG_GUARD_S
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, "the search ended before the moment to interrupt"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=HANG_GUARD_S)[0]
    assert proc.returncode == 130, out[-3000:]
    assert f"Continue the search: python -m framework.tune tune.resume={tune_dir}" in out


def asha_stops(rows, epochs, monitor, sign, milestones, rf, max_t):
    """ASHA's decisions worked out from the results in the order judged: ``{trial: epochs
    trained when stopped}``. At a rung (the milestones in descending order, the first one reached
    and not yet recorded), the (n+1)-th trial to get there goes on when at most k - 1 of the n
    rewards recorded before it beat its reward (``sign * value``), k = max(1, floor((n + 1) / rf));
    then its reward is recorded. Each reported value is checked against the run's ``epochs.csv``."""
    recorded = {m: {} for m in milestones}
    stopped_at = {}
    for row in rows:
        trial, t = row["trial"], row["epochs_trained"]
        assert trial not in stopped_at, "a stopped trial reported again"
        logged = float(epochs[trial][t - 1][monitor])  # the value the run wrote, not the reported copy
        assert row[monitor] == logged and int(epochs[trial][t - 1]["epoch"]) == t - 1
        if t >= max_t:
            continue
        for milestone in milestones:
            if t < milestone or trial in recorded[milestone]:
                continue
            rewards = list(recorded[milestone].values())
            k = max(1, (len(rewards) + 1) // rf)
            if sum(r > sign * logged for r in rewards) >= k:
                stopped_at[trial] = t
            recorded[milestone][trial] = sign * logged
            break
    return stopped_at


@pytest.mark.slow  # a Ray search (end-to-end)
def test_asha_stops_trials_by_its_rule_and_leaves_pruned_folders(ray_local, tmp_path, monkeypatch):
    # the user's config folder composes (--config-dir): a task monitoring val/loss (min), so the
    # search's metric is the task's, not val/acc, and the values are continuous (no ties)
    task_dir = tmp_path / "conf" / "task"
    task_dir.mkdir(parents=True)
    (task_dir / "loss_min.yaml").write_text(
        "# Classification judged by its validation loss.\n_target_: framework.tasks.Classification\n"
        "_partial_: true\nmonitor: val/loss  # (metric)\nmode: min  # (direction)\n")
    tune_dir = tmp_path / "tune"
    code = run_tune(["--config-dir", str(tmp_path / "conf"), *TINY, "task=loss_min", "epochs=3",
                     "lr0=tag(log, interval(1e-4, 1))", "tune.num_samples=4", "tune.max_concurrent_trials=2",
                     "tune.cpus_per_trial=1", "tune.grace_period=1", "tune.reduction_factor=2",
                     f"tune.dir={tune_dir}"], tmp_path, monkeypatch)
    assert code == 0
    summaries = {i: json.loads((tune_dir / str(i) / "summary.json").read_text()) for i in range(4)}
    epochs = {i: read_csv(tune_dir / str(i) / "epochs.csv") for i in range(4)}
    # ASHA by hand (ray.tune.schedulers.async_hyperband._Bracket, one bracket, s = 0): rungs at
    # grace * rf^k for k < int(log(max_t / grace) / log(rf) + 1) = int(log2(3) + 1) = 2: epochs 1 and 2;
    # a result at max_t = 3 epochs ends the trial. At a rung (tune.asha_rule=top_k, the default), the
    # (n+1)-th trial to get there goes on when at most k - 1 of the n rewards recorded before it beat its
    # reward (-val/loss: mode min), k = max(1, floor((n + 1) / rf)); then its reward is recorded.
    stopped_at = asha_stops(results_in_order(tune_dir), epochs, "val/loss", -1.0, milestones=(2, 1), rf=2, max_t=3)
    assert stopped_at, "the first two trials' order makes ASHA stop at least one of the last two"
    for i, summary in summaries.items():
        assert summary["objective_name"] == "val/loss" and "task=loss_min" in summary["overrides"]
        if i in stopped_at:
            t = stopped_at[i]
            assert summary["status"] == "pruned", (i, summary["status"])
            assert summary["pruned"]["epoch"] == t - 1 and summary["pruned"]["scheduler"] == "ASHA"
            assert summary["pruned"]["step"] == summary["steps"] == t * STEPS_PER_EPOCH
            assert len(epochs[i]) == t and (tune_dir / str(i) / "checkpoints" / "last.pt").is_file()
        else:
            assert summary["status"] == "completed" and len(epochs[i]) == 3
    report = (tune_dir / "report.md").read_text()
    assert "pruned" in report and all(f"lr0={summaries[i]['lr0']!r}" in report for i in range(4))
    assert "\nSearch: Ray Tune ASHA (grace_period=1, reduction_factor=2, asha_rule=top_k), 4 trials, seed 0, " \
           "space `lr0`.\n" in report


def test_the_top_k_asha_rule_by_hand_and_rays_own_percentile_rule():
    from framework.search.ray_asha import asha_scheduler, top_k_cutoff

    # eta = 4: the 5th trial at a rung must be the best of 5 (k = floor(5/4) = 1), the 8th among the best 2
    assert top_k_cutoff([0.1, 0.1, 0.106, 0.272], 4) == 0.272
    assert top_k_cutoff([0.5, 0.9, 0.7, 0.2, 0.8, 0.1, 0.6], 4) == 0.8  # k = floor(8/4) = 2: the second largest
    assert top_k_cutoff([], 4) is None and top_k_cutoff([float("nan")], 4) is None  # the first goes on
    assert top_k_cutoff([-2.0, -1.0], 2) == -1.0  # 3rd of rf 2: k = 1; rewards of mode min are negated losses
    nan = float("nan")  # NaN counts in n (7: the 8th trial, k = 2) and ranks below every number
    assert top_k_cutoff([nan, nan, nan, nan, 0.2, 0.5, 0.9], 4) == 0.5
    pytest.importorskip("ray.tune")
    from types import SimpleNamespace

    # Ray's percentile by hand: numpy's linear 75th percentile of (0.1, 0.1, 0.106, 0.272) sits at position
    # 0.75 * 3 = 2.25 of the sorted values: 0.106 + 0.25 * (0.272 - 0.106) = 0.1475. Then through Ray's own
    # bookkeeping (_Bracket.on_result at the rung of 1 epoch): the first four go on under both rules (each at
    # least as good as every one before it; ties go on), the fifth at 0.15 is stopped by top_k only

    for rule, expected, fifth in (("top_k", 0.272, "STOP"), ("percentile", 0.1475, "CONTINUE")):
        scheduler = asha_scheduler(rule, time_attr="epochs_trained", max_t=16, grace_period=1, reduction_factor=4)
        (bracket,) = scheduler._brackets
        assert bracket.cutoff({"a": 0.1, "b": 0.1, "c": 0.106, "d": 0.272}) == pytest.approx(expected)
        first = [bracket.on_result(SimpleNamespace(trial_id=t), 1, r) for t, r in zip("abcd", (0.1, 0.1, 0.106, 0.272))]
        assert first == ["CONTINUE"] * 4
        assert bracket.on_result(SimpleNamespace(trial_id="e"), 1, 0.15) == fifth
    assert [m for m, _ in bracket._rungs] == [16, 4, 1]  # int(log(16 / 1) / log(4) + 1) = 3 rungs: 4^2, 4^1, 4^0


def test_a_bad_asha_rule_is_one_line():
    from framework.search.ray_args import OPTIONS, _check

    assert _check({**OPTIONS, "asha_rule": "median"}) == [
        "tune.asha_rule=median: use top_k (the best 1/reduction_factor of the trials at a rung go on, as Optuna's), "
        "percentile (Ray's) or promotion (trials paused at rungs, promoted later), e.g. tune.asha_rule=top_k"]
    assert _check({**OPTIONS, "asha_rule": "promotion", "reduction_factor": 2.5, "max_concurrent_trials": 2}) == [
        "tune.max_concurrent_trials=2: tune.asha_rule=promotion keeps trials paused at rungs, which Ray's cap counts; "
        "leave it null and limit parallel trials with tune.cpus_per_trial",
        "tune.reduction_factor=2.5: must be a whole number >= 2 with tune.asha_rule=promotion, e.g. 4"]
    for search in ("hyperband", "pbt"):  # no other search reads the rule: refused, not ignored
        assert _check({**OPTIONS, "asha_rule": "promotion", "search": search}) == [
            "tune.asha_rule=promotion: applies to tune.search=asha only; drop it, or use tune.search=asha"]
    assert _check({**OPTIONS, "asha_rule": "percentile", "search": "asha"}) == []
    assert _check({**OPTIONS, "asha_rule": "top_k", "search": "pbt"}) == []  # the default, said out loud
    assert _check({**OPTIONS, "asha_rule": "promotion", "search": "pbt", "resume": "t"}) == []  # its own command again
    assert _check({**OPTIONS, "asha_rule": "promotion", "search": "hyperband", "reduction_factor": 2.5}) == [
        "tune.asha_rule=promotion: applies to tune.search=asha only; drop it, or use tune.search=asha"]
    assert _check({**OPTIONS, "asha_rule": "median", "search": "pbt"})[0].startswith("tune.asha_rule=median: use top_k")


def cosine_lr(lr0, k, total, lrf=0.01):
    """Cosine's LR of step k (README, the LR contract): lr0 * (lrf + (1 - lrf) * (1 + cos(pi k / (T-1))) / 2)."""
    return lr0 * (lrf + (1 - lrf) * (1 + math.cos(math.pi * k / (total - 1))) / 2)


@pytest.mark.long  # a Ray search (end-to-end; ASHA's runs in the default suite)
def test_pbt_exploits_exact_checkpoints_and_exports_the_best_schedule(ray_local, tmp_path, monkeypatch):
    import yaml

    tune_dir = tmp_path / "tune"
    code = run_tune([*TINY, "epochs=3", "task.monitor=val/loss", "task.mode=min", "tune.search=pbt",
                     "tune.num_samples=2", "tune.perturbation_interval=1", "tune.cpus_per_trial=2",
                     f"tune.dir={tune_dir}"], tmp_path, monkeypatch)
    assert code == 0
    total = 3 * STEPS_PER_EPOCH  # T = 12
    restored = 0
    for i in (0, 1):
        summary = json.loads((tune_dir / str(i) / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["planned_steps"] == total
        rows = read_csv(tune_dir / str(i) / "steps.csv")
        assert [int(r["step"]) for r in rows] == list(range(total))
        lineage = summary["tune"]["lineage"]
        assert lineage[0]["from_step"] == 0 and lineage[-1]["to_step"] is None and lineage[-1]["trial"] == i
        restored += len(lineage) > 1
        for seg, nxt in zip(lineage, lineage[1:] + [None]):
            end = total if nxt is None else seg["to_step"]
            assert nxt is None or nxt["from_step"] == seg["to_step"]
            for k in range(seg["from_step"], end):  # each segment follows its own lr0 from the step it took over
                assert float(rows[k]["lr"]) == pytest.approx(cosine_lr(seg["params"]["lr0"], k, total), rel=1e-12)
    # one trial at a time (2 CPUs each of 2): PBT pauses a trial after each epoch while the other waits
    # (it then continues from its own checkpoint: one lineage segment) and the worse one at a
    # perturbation continues from the better one's checkpoint with a perturbed lr0 (a new segment);
    # lr0 is seeded (tune.seed=0) and CPU training deterministic, so the order of results is too
    assert restored, "no trial continued from another trial's checkpoint"
    # the last epoch's result ends each trial (done): no exploit at the end, no last epoch trained again
    last = [r for r in results_in_order(tune_dir) if r["epochs_trained"] == 3]
    assert sorted(r["trial"] for r in last) == [0, 1] and all(r["done"] for r in last), last
    done = {i: json.loads((tune_dir / str(i) / "summary.json").read_text()) for i in (0, 1)}
    best = min(done, key=lambda i: (done[i]["objective"], i))  # val/loss: lower is better
    data = yaml.safe_load((tune_dir / "best_schedule.yaml").read_text())
    rows = read_csv(tune_dir / str(best) / "steps.csv")
    assert data["lr"] == [float(r["lr"]) for r in rows] and len(data["lr"]) == total
    # report.md shows the schedule's replay command and the best trial's lineage, segment by segment
    report = (tune_dir / "report.md").read_text()
    assert "## PBT: the best trial's schedule" in report
    assert f"scheduler=piecewise scheduler.path={tune_dir / 'best_schedule.yaml'}\n" in report
    lineage = done[best]["tune"]["lineage"]
    for i, seg in enumerate(lineage, 1):
        last = (total if seg["to_step"] is None else seg["to_step"]) - 1
        assert (f"| {i} | trial {seg['trial']} | {seg['from_step']}-{last} | "
                in report) == (len(lineage) > 1), (i, seg)
    # PBT perturbed SGD's momentum and weight decay too: a restored trial's schedule holds the
    # momentum of every step (steps.csv's column) and the weight decay from each lineage segment
    # where it changed, and a replay from scratch applies the same LR, momentum and weight decay
    from framework.schedules.piecewise import export_schedule, replay_command
    from tests.helpers import train_in_process

    moved = next(i for i in (0, 1) if len(done[i]["tune"]["lineage"]) > 1)
    rows = read_csv(tune_dir / str(moved) / "steps.csv")
    data = yaml.safe_load(export_schedule(tune_dir / str(moved), tmp_path / "moved.yaml").read_text())
    momenta = [float(r["momentum"]) for r in rows]
    pairs: list[list] = []
    for seg in done[moved]["tune"]["lineage"]:
        if not pairs or seg["params"]["optimizer.weight_decay"] != pairs[-1][1]:
            pairs.append([seg["from_step"], seg["params"]["optimizer.weight_decay"]])
    assert len(set(momenta)) > 1 and len(pairs) > 1, (momenta, pairs)  # (both perturbed at the exploit)
    assert data["momentum"] == momenta and data["weight_decay"] == pairs
    command = replay_command(done[moved], None, tmp_path / "moved.yaml").split()[2:]
    train_in_process(tmp_path / "replay", *command)
    again = read_csv(tmp_path / "replay" / "steps.csv")
    assert [float(r["lr"]) for r in again] == pytest.approx(data["lr"], rel=1e-12, abs=0)
    assert [float(r["momentum"]) for r in again] == momenta
    assert [float(r["weight_decay"]) for r in again] == [next(wd for step, wd in reversed(pairs) if step <= k)
                                                           for k in range(total)]


@pytest.mark.long  # a Ray search (end-to-end; 9 trials)
def test_hyperband_pauses_and_continues_trials_on_the_lr_plan(ray_local, tmp_path, monkeypatch):
    """HyperBand (synchronous brackets: 9 trials, 9 epochs, reduction factor 3) pauses trials at
    its rungs, continues some from their checkpoints and ends the others: the search is not called
    interrupted (exit 0, no trial ``stopped``), every trial's steps.csv holds each step once at the
    cosine LR of its lr0 (the LR contract across the pauses), and an ended trial is pruned at a
    whole epoch."""
    tune_dir = tmp_path / "tune"
    code = run_tune([*TINY, "epochs=9", "lr0=tag(log, interval(1e-3, 1))", "tune.search=hyperband",
                     "tune.num_samples=9", "tune.reduction_factor=3", "tune.cpus_per_trial=2", f"tune.dir={tune_dir}"],
                    tmp_path, monkeypatch)
    assert code == 0
    total = 9 * STEPS_PER_EPOCH
    summaries = {i: json.loads((tune_dir / str(i) / "summary.json").read_text()) for i in range(9)}
    statuses = sorted(s["status"] for s in summaries.values())
    assert set(statuses) == {"completed", "pruned"}, statuses  # halved, and not taken for a Ctrl-C
    order = [row["trial"] for row in results_in_order(tune_dir)]
    resumed = [t for t in set(order) if order.index(t) + order.count(t) - 1 != max(i for i, x in enumerate(order) if x == t)]
    assert resumed, f"no trial was paused and continued: {order}"  # its results are not one run of rows
    for i, summary in summaries.items():
        rows = read_csv(tune_dir / str(i) / "steps.csv")
        assert [int(r["step"]) for r in rows] == list(range(summary["steps"]))  # each step once
        assert summary["steps"] == total if summary["status"] == "completed" else summary["steps"] < total
        assert summary["steps"] % STEPS_PER_EPOCH == 0
        for k, row in enumerate(rows):
            assert float(row["lr"]) == pytest.approx(cosine_lr(summary["lr0"], k, total), rel=1e-12)


@pytest.mark.long  # a Ray search (end-to-end; promotions pause and resume trials)
def test_asha_with_promotions_pauses_and_resumes_trials_within_its_budget(ray_local, tmp_path, monkeypatch):
    """tune.asha_rule=promotion, 4 trials two at a time, 4 epochs, reduction factor 2: rungs after 1, 2, 4
    epochs. Whatever order the trials report in: at most floor(4/2) = 2 trials go past epoch 1, the
    better of them at epoch 2 (val/loss, minimised) is the one completed trial, so at most
    4 + 2 + 2 = 8 epochs are trained; every run's steps.csv holds each step once at the cosine LR of
    its lr0 across its pauses; the others are pruned at the epoch they paused at."""
    tune_dir = tmp_path / "tune"
    code = run_tune([*TINY, "epochs=4", "task.monitor=val/loss", "task.mode=min", "lr0=tag(log, interval(1e-3, 1))",
                     "tune.asha_rule=promotion", "tune.num_samples=4", "tune.reduction_factor=2", "tune.cpus_per_trial=1",
                     f"tune.dir={tune_dir}"], tmp_path, monkeypatch)
    assert code == 0
    total = 4 * STEPS_PER_EPOCH
    summaries = {i: json.loads((tune_dir / str(i) / "summary.json").read_text()) for i in range(4)}
    epochs = {i: [float(r["val/loss"]) for r in read_csv(tune_dir / str(i) / "epochs.csv")] for i in range(4)}
    completed = [i for i, s in summaries.items() if s["status"] == "completed"]
    assert len(completed) == 1 and len(epochs[completed[0]]) == 4
    past_first = [i for i in range(4) if len(epochs[i]) >= 2]
    assert len(past_first) <= 2 and completed[0] == min(past_first, key=lambda i: epochs[i][1])
    assert sum(len(e) for e in epochs.values()) <= 8
    for i, summary in summaries.items():
        rows = read_csv(tune_dir / str(i) / "steps.csv")
        assert [int(r["step"]) for r in rows] == list(range(summary["steps"])) == list(range(len(epochs[i]) * 4))
        assert summary["wall_time_s"] >= summary["train_time_s"]  # both over every segment of the trial
        for k, row in enumerate(rows):
            assert float(row["lr"]) == pytest.approx(cosine_lr(summary["lr0"], k, total), rel=1e-12)
        if i not in completed:
            assert summary["status"] == "pruned" and summary["pruned"]["epoch"] == len(epochs[i]) - 1


def test_missing_ray_is_one_line(monkeypatch, capsys):
    from framework.tune import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    assert main(["epochs=1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: python -m framework.tune needs Ray; pip install 'lrframe[ray]'"]


def test_a_bad_tune_key_is_one_line_naming_it():
    pytest.importorskip("ray")
    proc = subprocess.run([sys.executable, "-m", "framework.tune", *TINY, "tune.serach=pbt", "tune.num_samples=0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("error: tune.serach=pbt: unknown key 'tune.serach' (did you mean search?); tune keys")
    assert lines[1] == "error: tune.num_samples=0: must be a whole number >= 1 (trials), e.g. tune.num_samples=16"
    assert len(lines) == 2 and "Traceback" not in proc.stderr


def test_promotions_without_checkpoints_are_one_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray")
    code = run_tune([*TINY, "tune.asha_rule=promotion", "trainer.save_checkpoints=false", f"tune.dir={tmp_path / 't'}"],
                    tmp_path, monkeypatch)
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == ("error: trainer.save_checkpoints=false: tune.asha_rule=promotion resumes a "
                                         "promoted trial from its checkpoint; drop it, or use tune.asha_rule=top_k")
    assert not (tmp_path / "t").exists()


def test_hydra_sweep_syntax_becomes_ray_distributions():
    pytest.importorskip("ray")
    from ray.tune.search.sample import Categorical, Float, Integer

    from framework.search.ray_tune import ray_domain
    from framework.search.space import parse_space

    space = parse_space({"optimizer.momentum": "interval(0.8, 0.99)"},
                        ["lr0=tag(log, interval(1e-4, 1))", "batch_size=range(16, 80, 16)",
                         "warmup_steps=range(0, 6)", "scheduler=cosine,step", "epochs=3"])
    domains = {k: ray_domain(d) for k, d in space.distributions.items()}
    assert space.fixed == ["epochs=3"]
    lr0, mom, batch, warm, sched = (domains[k] for k in ("lr0", "optimizer.momentum", "batch_size", "warmup_steps",
                                                          "scheduler"))
    assert isinstance(lr0, Float) and (lr0.lower, lr0.upper) == (1e-4, 1.0)
    assert isinstance(mom, Float) and (mom.lower, mom.upper) == (0.8, 0.99)
    assert isinstance(sched, Categorical) and list(sched.categories) == ["cosine", "step"]
    rng = np.random.default_rng(0)
    # log-uniform on [1e-4, 1]: half the draws below the log midpoint 1e-2 (a uniform draw: 1%);
    # uniform on [0.8, 0.99]: half below 0.895 (4000 draws: standard error 0.008)
    lrs, moms = np.array(lr0.sample(size=4000, random_state=rng)), np.array(mom.sample(size=4000, random_state=rng))
    assert lrs.min() >= 1e-4 and lrs.max() <= 1 and 0.46 < (lrs < 1e-2).mean() < 0.54
    assert moms.min() >= 0.8 and moms.max() <= 0.99 and 0.46 < (moms < 0.895).mean() < 0.54
    # range(16, 80, 16) = 16, 32, 48, 64 and range(0, 6) = 0..5 (Hydra's stop is exclusive; Ray's
    # randint's upper bound too, its qrandint's is inclusive)
    assert isinstance(batch, Integer) and set(batch.sample(size=400, random_state=rng)) == {16, 32, 48, 64}
    assert isinstance(warm, Integer) and set(warm.sample(size=400, random_state=rng)) == {0, 1, 2, 3, 4, 5}


def test_the_trial_hook_reports_each_epoch_and_stops_only_before_the_last(tmp_path):
    from framework.search.ray_trial import CHANNELS, Channel, RayTrial, steps_done

    (tmp_path / "steps.csv").write_text("step,epoch,lr,loss\n" + "".join(f"{k},{k // 4},0.1,2.0\n" for k in range(8)))
    assert steps_done(tmp_path) == 8  # rows of steps 0..7
    channel = Channel({"trial": 7}, ["epochs=3"], "ASHA", "val/loss", "min")
    CHANNELS[7] = channel
    try:
        summary = {"planned_epochs": 3, "planned_steps": 12}
        hook = RayTrial(7)
        hook.start(tmp_path, summary, resumed=False)
        assert summary["tune"] == {"trial": 7} and summary["overrides"] == ["epochs=3"]
        channel.decisions.put("stop")  # Tune's answer to the result the hook is about to hand over
        assert hook.should_prune(1, {"epoch": 1, "val/loss": 2.25, "lr": 0.1}, 2.25) is True
        kind, result = channel.results.get_nowait()
        assert kind == "epoch" and result["val/loss"] == 2.25 and result["epochs_trained"] == 2 and result["step"] == 8
        assert hook.report() == {"scheduler": "ASHA", "trial": 7, "value": 2.25}
        last = RayTrial(7)
        last.start(tmp_path, {"planned_epochs": 3, "planned_steps": 12}, resumed=False)
        channel.decisions.put("stop")  # a stop after the last epoch: the run ends by itself, completed
        assert last.should_prune(2, {"epoch": 2, "val/loss": float("nan")}, None) is False
        assert channel.results.get_nowait()[1]["val/loss"] == math.inf  # no value: the worst for min
        assert last.report() == {}
    finally:
        CHANNELS.pop(7, None)


class TuneLikeTuner:
    """A tuner whose ``fit`` handles SIGINT as Ray Tune's does (``ray.tune.tune._setup_signal_catching``):
    it installs its own handler, which on a SIGINT ends the run and puts back the handler it found;
    ``ctrl_c`` sends this process a SIGINT during the fit."""

    def __init__(self, ctrl_c):
        self.ctrl_c = ctrl_c

    def fit(self):
        import os
        import signal

        found = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, lambda signum, frame: signal.signal(signal.SIGINT, found))
        if self.ctrl_c:
            os.kill(os.getpid(), signal.SIGINT)
        return "results"


@pytest.mark.parametrize("ctrl_c", [False, True])
def test_a_search_is_interrupted_only_by_a_ctrl_c(ctrl_c):
    import signal

    from framework.search.ray_resume import fit_watching_sigint

    before = signal.getsignal(signal.SIGINT)
    assert fit_watching_sigint(TuneLikeTuner(ctrl_c)) == ("results", ctrl_c)
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is back either way


class RemoteTuner:
    """A tuner whose search runs on the cluster (Ray Client: Tune's ``fit`` is a remote call),
    installing no SIGINT handler in this process; ``ctrl_c`` sends this process a SIGINT meanwhile."""

    def __init__(self, ctrl_c):
        self.ctrl_c = ctrl_c

    def fit(self):
        import os
        import signal

        if self.ctrl_c:
            os.kill(os.getpid(), signal.SIGINT)
        return "results"


@pytest.mark.parametrize("ctrl_c", [False, True])
def test_through_ray_client_only_a_ctrl_c_here_interrupts(monkeypatch, ctrl_c):
    """A search through Ray Client that ended by itself is not taken for an interrupted one (the
    handler left in place proves nothing there); a Ctrl-C here ends the fit as a KeyboardInterrupt."""
    import signal

    ray = pytest.importorskip("ray")
    from framework.search.ray_resume import fit_watching_sigint

    monkeypatch.setattr(ray.util.client.ray, "is_connected", lambda: True)
    before = signal.getsignal(signal.SIGINT)
    if ctrl_c:
        with pytest.raises(KeyboardInterrupt):
            fit_watching_sigint(RemoteTuner(True))
    else:
        assert fit_watching_sigint(RemoteTuner(False)) == ("results", False)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_ctrl_c_leaves_running_trials_stopped_not_pruned(tmp_path):
    from types import SimpleNamespace

    from framework.search.ray_results import _mend_interrupted

    for i in (0, 1):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "summary.json").write_text(json.dumps(
            {"status": "pruned", "pruned": {"epoch": 4, "step": 20, "scheduler": "ASHA"}, "steps": 20}))
    results = [SimpleNamespace(path=str(tmp_path / "ray" / "trial_0"), error=None, metrics={"done": True}),
               SimpleNamespace(path=str(tmp_path / "ray" / "trial_1"), error=None, metrics={"epoch": 4})]
    _mend_interrupted(tmp_path, results)
    kept, stopped = (json.loads((tmp_path / str(i) / "summary.json").read_text()) for i in (0, 1))
    assert kept["status"] == "pruned" and kept["pruned"]["scheduler"] == "ASHA"  # Tune ended it: done
    assert stopped["status"] == "stopped" and stopped["stop_reason"] == "tune interrupted" and "pruned" not in stopped
    assert stopped["resume_with"] == f"resume={tmp_path / '1'}" and stopped["steps"] == 20


# ---- tune.resume: the rest of an interrupted search ----

def test_asha_rungs_are_refilled_from_results_jsonl(tmp_path):
    """Rungs after 1, 2 and 4 epochs (max_t 4, grace 1, rf 2: k < int(log2(4) + 1)). By hand: rung 1
    records a 0.5, b 0.4, c 0.7 (b went on or not, it is recorded); rung 2 records a 0.6; a's result
    at max_t ends it (Ray records none). A cut line and a row without trial_id are skipped. Then b
    at 2 epochs with 0.55: k = max(1, floor(2 / 2)) = 1, a's 0.6 beats it: STOP; 0.65: CONTINUE."""
    pytest.importorskip("ray")
    from ray.tune.schedulers import TrialScheduler

    from framework.search.ray_asha import asha_scheduler
    from framework.search.ray_resume import _Seen, seed_asha

    rows = [{"trial": 0, "trial_id": "a", "epochs_trained": 1, "val/acc": 0.5},
            {"trial": 0, "trial_id": "a", "epochs_trained": 2, "val/acc": 0.6},
            {"trial": 1, "trial_id": "b", "epochs_trained": 1, "val/acc": 0.4},
            {"trial": 9, "epochs_trained": 1, "val/acc": 0.99},
            {"trial": 2, "trial_id": "c", "epochs_trained": 1, "val/acc": 0.7},
            {"trial": 0, "trial_id": "a", "epochs_trained": 4, "val/acc": 0.9}]  # max_t: the end, no rung
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"trial": 3, "trial_id": "d", "epo')

    def seeded(mode):
        scheduler = asha_scheduler("top_k", time_attr="epochs_trained", max_t=4, grace_period=1,
                                   reduction_factor=2, metric="val/acc", mode=mode)
        return scheduler, seed_asha(scheduler, path, "val/acc", mode, "epochs_trained")

    scheduler, count = seeded("max")
    assert count == 4
    rungs = dict(scheduler._brackets[0]._rungs)
    assert rungs == {4: {}, 2: {"a": 0.6}, 1: {"a": 0.5, "b": 0.4, "c": 0.7}}
    assert scheduler._brackets[0].on_result(_Seen("b"), 2, 0.55) == TrialScheduler.STOP
    assert seeded("max")[0]._brackets[0].on_result(_Seen("b"), 2, 0.65) == TrialScheduler.CONTINUE
    # a metric to minimise is negated, as Ray's scheduler does
    assert dict(seeded("min")[0]._brackets[0]._rungs)[2] == {"a": -0.6}
    assert seed_asha(scheduler, tmp_path / "none.jsonl", "val/acc", "max", "epochs_trained") == 0


def test_tune_resume_takes_the_recorded_command_and_refuses_in_one_line(tmp_path):
    from framework.errors import ConfigError
    from framework.search.ray_resume import resumed_command

    folder = tmp_path / "t"
    with pytest.raises(ConfigError, match=r"tune.resume=.*: continues the recorded search as it was; drop epochs=3"):
        resumed_command([f"tune.resume={folder}", "epochs=3"], folder)
    with pytest.raises(ConfigError, match="no such folder"):
        resumed_command([f"tune.resume={folder}"], folder)
    folder.mkdir()
    (folder / "summary.json").write_text("{}")
    with pytest.raises(ConfigError, match=f"a run folder, not a tune folder; continue one run with lrframe <its "
                                          f"overrides> resume={folder}"):
        resumed_command([f"tune.resume={folder}"], folder)
    (folder / "summary.json").unlink()
    with pytest.raises(ConfigError, match="no multirun.yaml there"):
        resumed_command([f"tune.resume={folder}"], folder)
    (folder / "multirun.yaml").write_text("epochs: 3\ntune:\n  search: asha\n")
    with pytest.raises(ConfigError, match=r"does not hold the command line \(tune.argv\)"):
        resumed_command([f"tune.resume={folder}"], folder)
    (folder / "multirun.yaml").write_text("tune: [unclosed\n")
    with pytest.raises(ConfigError, match=r"its multirun.yaml cannot be read \(.*\); restore it, or run the search"):
        resumed_command([f"tune.resume={folder}"], folder)
    (folder / "multirun.yaml").write_text(
        "tune:\n  argv: ['+debug=tiny', 'lr0=tag(log, interval(1e-4, 1))', 'tune.dir=/old/place', "
        f"'tune.address=auto', 'tune.num_samples=6']\n  cwd: {tmp_path}\n")
    pytest.importorskip("ray")
    with pytest.raises(ConfigError, match=r"cannot be resumed through Ray Client \(tune.address=ray://h:10001\)"):
        resumed_command([f"tune.resume={folder}", "tune.address=ray://h:10001"], folder)
    with pytest.raises(ConfigError, match=r"Ray's state \(ray/tuner.pkl\) is not there"):
        resumed_command([f"tune.resume={folder}"], folder)
    (folder / "ray").mkdir()
    (folder / "ray" / "tuner.pkl").write_bytes(b"")
    argv, cwd = resumed_command([f"tune.resume={folder}", "tune.address=head:6379"], folder)
    assert argv == ["+debug=tiny", "lr0=tag(log, interval(1e-4, 1))", "tune.num_samples=6",
                    "tune.address=head:6379", f"tune.dir={folder}", f"tune.resume={folder}"]
    assert cwd == str(tmp_path)
    assert resumed_command([f"tune.resume={folder}"], folder)[0][3] == "tune.address=auto"


@pytest.mark.long  # two Ray searches in subprocesses (about a minute)
def test_an_interrupted_asha_search_resumes_where_it_stopped(tmp_path):
    """Ctrl-C while the second of 4 trials trains (one at a time), then tune.resume: the first
    trial's folder is untouched, the second continues (from its last epoch, or afresh when it
    had not finished one: each step once in its steps.csv), the others run, and
    every ASHA decision, over the results of both parts, follows the top-k rule."""
    tune_dir = tmp_path / "t"
    # rungs after 1 and 4 epochs of 6 (rf 4): trial 1 goes on at the first (a tie) and has 3 epochs to
    # be interrupted in before the next
    argv = [*TINY, "epochs=6", "tune.num_samples=4", "tune.reduction_factor=4", "tune.cpus_per_trial=2",
            f"tune.dir={tune_dir}"]
    # trial 1 has finished an epoch
    interrupt_search(argv, tmp_path, tune_dir, lambda: (tune_dir / "1" / "checkpoints" / "last.pt").is_file())
    first = (tune_dir / "0" / "summary.json").read_bytes()
    assert json.loads(first)["status"] in ("completed", "pruned")
    stopped = json.loads((tune_dir / "1" / "summary.json").read_text())
    # trial 1 was running (stopped), unless ASHA judged it at its next rung before the interrupt took
    # effect; trials 2 and 3 had not started: either way the search is interrupted (exit 130)
    assert stopped["status"] in ("stopped", "pruned"), stopped
    judged = sum(r["epochs_trained"] < 6 for r in results_in_order(tune_dir))  # judged at a rung before (not the end)

    proc = subprocess.run([sys.executable, "-m", "framework.tune", f"tune.resume={tune_dir}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tune: resuming asha" in proc.stderr and f"ASHA's rungs refilled with the {judged} results" in proc.stderr
    assert sorted(int(p.name) for p in tune_dir.iterdir() if p.name.isdigit()) == [0, 1, 2, 3]
    assert (tune_dir / "0" / "summary.json").read_bytes() == first
    summaries = {i: json.loads((tune_dir / str(i) / "summary.json").read_text()) for i in range(4)}
    assert all(s["status"] in ("completed", "pruned") for s in summaries.values()), summaries
    rows = read_csv(tune_dir / "1" / "steps.csv")
    assert [int(r["step"]) for r in rows] == list(range(summaries[1]["steps"]))  # each step once
    epochs = {i: read_csv(tune_dir / str(i) / "epochs.csv") for i in range(4)}
    stopped_at = asha_stops(results_in_order(tune_dir), epochs, "val/acc", 1.0, milestones=(4, 1), rf=4, max_t=6)
    for i, summary in summaries.items():
        assert summary["status"] == ("pruned" if i in stopped_at else "completed"), (i, stopped_at)


@pytest.mark.long  # two Ray searches in subprocesses (about a minute)
def test_an_interrupted_pbt_search_resumes_and_keeps_the_lr_contract_along_each_lineage(tmp_path):
    """Ctrl-C once PBT has judged 3 results of 2 trials (one at a time, 4 epochs each), then
    tune.resume: both trials end completed, each step once in their steps.csv, every step's LR the
    cosine of the lr0 of the lineage segment it belongs to, and the exported schedule is the best
    trial's applied LR."""
    import yaml

    tune_dir = tmp_path / "t"
    argv = [*TINY, "epochs=4", "task.monitor=val/loss", "task.mode=min", "tune.search=pbt", "tune.num_samples=2",
            "tune.perturbation_interval=1", "tune.cpus_per_trial=2", f"tune.dir={tune_dir}"]
    interrupt_search(argv, tmp_path, tune_dir,
                     lambda: (tune_dir / "results.jsonl").is_file() and len(results_in_order(tune_dir)) >= 3)

    proc = subprocess.run([sys.executable, "-m", "framework.tune", f"tune.resume={tune_dir}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tune: resuming pbt" in proc.stderr
    total = 4 * STEPS_PER_EPOCH
    done = {i: json.loads((tune_dir / str(i) / "summary.json").read_text()) for i in (0, 1)}
    for i, summary in done.items():
        assert summary["status"] == "completed" and summary["steps"] == total, summary
        rows = read_csv(tune_dir / str(i) / "steps.csv")
        assert [int(r["step"]) for r in rows] == list(range(total))  # each step once, across the interruption
        lineage = summary["tune"]["lineage"]
        for seg, nxt in zip(lineage, lineage[1:] + [None]):
            end = total if nxt is None else seg["to_step"]
            for k in range(seg["from_step"], end):
                assert float(rows[k]["lr"]) == pytest.approx(cosine_lr(seg["params"]["lr0"], k, total), rel=1e-12)
    best = min(done, key=lambda i: (done[i]["objective"], i))
    schedule = yaml.safe_load((tune_dir / "best_schedule.yaml").read_text())
    assert schedule["lr"] == [float(r["lr"]) for r in read_csv(tune_dir / str(best) / "steps.csv")]


def test_the_pbt_report_section_gives_the_replay_and_the_best_trials_lineage(tmp_path):
    """Two hand-made PBT trials of 10 steps: trial 1 (val/loss 0.2, the best: lower is better)
    continued from trial 0's checkpoint at step 4 with lr0 0.05, so trial 0 trained its steps 0-3
    and trial 1 steps 4-9; trial 0 never left its own line."""
    from framework.search.best import SCHEDULE_NAME, pbt_section

    lineage = [{"trial": 0, "from_step": 0, "to_step": 4, "params": {"lr0": 0.1, "optimizer.momentum": 0.9}},
               {"trial": 1, "from_step": 4, "to_step": None, "params": {"lr0": 0.05, "optimizer.momentum": 0.85}}]
    for i, (objective, trail) in enumerate([(0.3, [{"trial": 0, "from_step": 0, "to_step": None, "params": {}}]),
                                            (0.2, lineage)]):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "summary.json").write_text(json.dumps({
            "status": "completed", "objective": objective, "objective_mode": "min", "steps": 10,
            "overrides": ["epochs=2", "lr0=0.05", "warmup_epochs=0"], "tune": {"lineage": trail}}))
    missing = (f"`{SCHEDULE_NAME}` was not written for it; export trial 1's schedule with "
               f"`python -m framework.schedules.piecewise {tmp_path / '1'} -o {tmp_path / SCHEDULE_NAME}`.")
    assert pbt_section(tmp_path)[2] == missing
    # a file exported from another trial (an earlier best) is not this one's
    (tmp_path / SCHEDULE_NAME).write_text(f"# Source: {tmp_path / '0'} (steps.csv: 10 steps)\nlr: [0.1]\n")
    assert pbt_section(tmp_path)[2] == missing
    (tmp_path / SCHEDULE_NAME).write_text(f"# Source: {tmp_path / '1'} (steps.csv: 10 steps)\nlr: [0.1]\n")
    lines = pbt_section(tmp_path)
    assert lines[lines.index("```bash") + 1] == ("lrframe epochs=2 scheduler=piecewise "
                                                 f"scheduler.path={tmp_path / SCHEDULE_NAME} warmup_epochs=0 "
                                                 "warmup_steps=null")
    assert lines[-5:] == ["| segment | trained by | steps | `lr0` | `optimizer.momentum` |",
                          "|---:|---|---|---:|---:|",
                          "| 1 | trial 0 | 0-3 | 0.1 | 0.9 |",
                          "| 2 | trial 1 | 4-9 | 0.05 | 0.85 |", ""]
