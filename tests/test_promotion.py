"""ASHA with promotions (hydra/sweeper/pruner=asha_promotion): its rungs, its choice of jobs worked
out by hand (the budget bound included), and a real sweep whose pauses and promotions are checked
against the values its jobs wrote, the promoted run equal to a run trained straight through."""
from __future__ import annotations

import json

import pytest

from tests.helpers import TINY, read_csv, train_in_process
from tests.test_report import multirun

optuna = pytest.importorskip("optuna")


def _scheduler(**kw):
    from framework.search.rungs import PromotionRule

    return PromotionRule(**kw)


def test_rungs_are_min_resource_times_eta_powers_then_the_full_budget():
    assert _scheduler(min_resource=1, reduction_factor=4, max_resource=16).rungs == [1, 4, 16]
    assert _scheduler(min_resource=1, reduction_factor=4, max_resource=9).rungs == [1, 4, 9]
    assert _scheduler(min_resource=1, reduction_factor=3, max_resource=16).rungs == [1, 3, 9, 16]
    assert _scheduler(min_resource=2, reduction_factor=2, max_resource=8).rungs == [2, 4, 8]
    assert _scheduler(min_resource=4, reduction_factor=2, max_resource=4).rungs == [4]


@pytest.mark.parametrize("kw, says", [
    ({"reduction_factor": 1}, "hydra.sweeper.pruner.reduction_factor=1: must be an integer >= 2"),
    ({"min_resource": 0}, "hydra.sweeper.pruner.min_resource=0: must be an integer >= 1"),
    ({"min_resource": 5, "max_resource": 4}, "hydra.sweeper.pruner.max_resource=4: must be >= min_resource (5)"),
    ({"max_resource": 2.5}, "hydra.sweeper.pruner.max_resource=2.5: must be an integer >= 1"),
])
def test_bad_values_are_one_line_naming_the_key(kw, says):
    from framework.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        _scheduler(**kw)
    assert str(info.value) == says


def _drive(scheduler, n_trials, value, maximize=True):
    """Run the scheduler's jobs one at a time (n_jobs 1) on trials whose value after e epochs is
    ``value(number, e)``; the jobs in order as (trial, until) and the epochs trained in all."""
    from framework.search.rungs import TrialRecord

    trials: dict[int, TrialRecord] = {}
    jobs, epochs = [], 0
    while True:
        job = scheduler.next_job(list(trials.values()), len(trials), n_trials, set(), maximize)
        if job is None:
            return jobs, epochs
        number = len(trials) if job.number is None else job.number
        trial = trials.setdefault(number, TrialRecord(number, until=job.until))
        done = max(trial.values, default=0)
        trial.values.update({e: value(number, e) for e in range(done + 1, job.until + 1)})
        epochs += job.until - done
        full = job.until >= scheduler.max_resource
        trial.paused_at, trial.complete = (None, True) if full else (job.until, False)
        jobs.append((number, job.until))


def test_trials_that_improve_one_after_another_do_not_break_the_budget():
    """Each trial better than every one before (what a sampler that learns proposes): the paper's
    rule would promote each new leader; here at most floor(n/4) leave rung 1, then the best at
    rung 4 trains to the end. By hand, rungs 1, 4, 16: trials 0-3, trial 3 (best of 4) to 4 epochs,
    trials 4-7, trial 7 (best waiting in the top 2 of 8) to 4, trial 8, then the better of 3 and 7
    at 4 epochs (7) to 16: 9 x 1 + 2 x 3 + 12 = 27 epochs."""
    jobs, epochs = _drive(_scheduler(min_resource=1, reduction_factor=4, max_resource=16), 9,
                          lambda n, e: n + e / 100)
    assert jobs == [(0, 1), (1, 1), (2, 1), (3, 1), (3, 4), (4, 1), (5, 1), (6, 1), (7, 1), (7, 4), (8, 1), (7, 16)]
    assert epochs == 27  # 18.75% of 9 x 16


def test_worse_trials_later_and_minimizing():
    """Each trial worse than the ones before, the objective minimized (value = n: trial 0 is best):
    trial 0 (best of 0-3) goes to 4 epochs after trial 3, trial 1 (the only waiting one in the
    top 2 of 8) after trial 7; trial 0 is better at 4 epochs, so it trains to 16."""
    jobs, epochs = _drive(_scheduler(min_resource=1, reduction_factor=4, max_resource=16), 9,
                          lambda n, e: n - e / 100, maximize=False)
    assert jobs == [(0, 1), (1, 1), (2, 1), (3, 1), (0, 4), (4, 1), (5, 1), (6, 1), (7, 1), (1, 4), (8, 1), (0, 16)]
    assert epochs == 27


def test_a_rung_that_fills_promotes_its_top_quarter():
    """16 trials alike except their number (higher better), rungs 1, 4, 16: floor(16/4) = 4 reach 4
    epochs (trials 3, 7, 11, 15: each the best waiting in the top k when k grows), floor(4/4) = 1
    of them reaches 16 by rule 1 (15, once 4 are at 4 epochs); no rule-3 job: 16 + 4 x 3 + 12 = 40."""
    jobs, epochs = _drive(_scheduler(min_resource=1, reduction_factor=4, max_resource=16), 16,
                          lambda n, e: n + e / 100)
    assert [j for j in jobs if j[1] > 1] == [(3, 4), (7, 4), (11, 4), (15, 4), (15, 16)]
    assert epochs == 40


def test_promotions_rank_by_the_value_at_the_rung_not_the_trials_best():
    """Trial 1 is better at 4 epochs (0.9 against 0.8) although trial 0 has the best value of all
    (0.95 at epoch 2) and led at 1 epoch."""
    from framework.search.rungs import TrialRecord

    scheduler = _scheduler(min_resource=1, reduction_factor=4, max_resource=16)
    trials = [TrialRecord(0, {1: 0.7, 2: 0.95, 3: 0.78, 4: 0.8}, paused_at=4), TrialRecord(1, {1: 0.6, 4: 0.9}, paused_at=4),
              TrialRecord(2, {1: 0.5}, paused_at=1)]
    assert scheduler.next_job(trials, 3, 3, {2}, maximize=True) is None  # a job still running: wait for it
    job = scheduler.next_job(trials, 3, 3, set(), maximize=True)
    assert (job.number, job.until) == (1, 16) and trials[1].until == 16


def test_a_promotion_that_failed_keeps_its_place():
    """Rungs 1, 4, 16, 8 trials: floor(8/4) = 2 may go past epoch 1. Trials 0 and 1 were sent to 4
    epochs; trial 0 failed at epoch 2 (no value at 4). No third trial goes on from rung 1, although
    trial 7 is the best there and waits."""
    from framework.search.rungs import TrialRecord

    scheduler = _scheduler(min_resource=1, reduction_factor=4, max_resource=16)
    trials = [TrialRecord(0, {1: 0.9, 2: 0.1}, until=4), TrialRecord(1, {1: 0.8, 4: 0.85}, paused_at=4, until=4)]
    trials += [TrialRecord(n, {1: 0.1 * n}, paused_at=1, until=1) for n in range(2, 8)]
    trials[-1].values[1] = 0.99
    job = scheduler.next_job(trials, 8, 9, set(), maximize=True)
    assert (job.number, job.until) == (None, 1)  # a new trial, not trial 7
    job = scheduler.next_job(trials, 9, 9, set(), maximize=True)
    assert (job.number, job.until) == (1, 16)  # rule 3: the best waiting at the highest rung


@pytest.mark.slow
def test_a_sweep_pauses_and_promotes_trials_from_their_checkpoints(tmp_path):
    """4 trials of a grid over lr0, 4 epochs, rungs 1, 2, 4 (eta 2), in batches of two jobs (Hydra's
    basic launcher runs them in this process, one after the other, as the straight run below).
    By hand from the rule and the values the jobs wrote (epochs.csv): trials 0 and 1; the better
    at epoch 1 (A) to epoch 2 beside trial 2; trial 3; the best waiting trial among the top 2 at
    epoch 1 (C) to epoch 2; the better of A and C at epoch 2 (D) to epoch 4. 8 of 16 epochs. The
    promoted run, paused twice, has the losses of the same run trained straight through."""
    sweep = tmp_path / "s"
    proc = multirun(sweep, "dataset=digits", "model=test_resnet", "trainer.progress_bar=false", "device=cpu", "epochs=4",
                    "hydra/sweeper=lr_search", "hydra/sweeper/sampler=grid", "hydra/sweeper/pruner=asha_promotion",
                    "hydra.sweeper.pruner.reduction_factor=2", "lr0=0.003,0.01,0.03,0.1", "hydra.sweeper.n_trials=4",
                    "hydra.sweeper.n_jobs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    curves = {n: [float(r["val/acc"]) for r in read_csv(sweep / str(n) / "epochs.csv")] for n in range(4)}

    def best(numbers, epoch):  # highest value after `epoch` epochs; ties: the lower number
        return max(numbers, key=lambda n: (curves[n][epoch - 1], -n))

    a = best([0, 1], 1)
    top2 = sorted(range(4), key=lambda n: (-curves[n][0], n))[:2]
    c = best([n for n in top2 if n != a], 1)
    d = best([a, c], 2)
    trained = {n: 4 if n == d else 2 if n in (a, c) else 1 for n in range(4)}
    assert {n: len(curves[n]) for n in range(4)} == trained
    study = optuna.load_study(study_name="lr_search", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sweep / "optuna_journal.log"))))
    for t in study.get_trials():
        summary = json.loads((sweep / str(t.number) / "summary.json").read_text())
        assert summary["steps"] == 23 * trained[t.number]  # 1437 images / 64 -> 23 steps an epoch
        assert t.intermediate_values == pytest.approx(dict(enumerate(curves[t.number], start=1)), rel=1e-6)
        if t.number == d:
            assert summary["status"] == "completed" and t.state == optuna.trial.TrialState.COMPLETE
            assert t.value == pytest.approx(max(curves[d]), rel=1e-6)
        else:
            assert summary["status"] == "pruned" and t.state == optuna.trial.TrialState.PRUNED
            assert summary["pruned"]["rung"] == trained[t.number] and summary["pruned"]["pruner"] == "PromotionASHA"
    report = json.loads((sweep / "search.json").read_text())
    assert report["steps_spent"] == 23 * 8 and report["steps_full_grid"] == 23 * 16

    folder = sweep / str(d)
    told = [o for o in json.loads((folder / "summary.json").read_text())["overrides"] if not o.startswith("search=")]
    train_in_process(tmp_path / "straight", *told)
    paused, straight = read_csv(folder / "steps.csv"), read_csv(tmp_path / "straight" / "steps.csv")
    assert [int(r["step"]) for r in paused] == list(range(92))
    assert [(r["lr"], r["loss"]) for r in paused] == [(r["lr"], r["loss"]) for r in straight]


@pytest.mark.long
def test_a_promoted_trial_stopped_mid_epoch_is_promoted_again_when_the_sweep_resumes(tmp_path):
    """2 trials, rungs 1, 2, 4 (eta 2), every job stopped at step 30 (epoch 1 ends at step 23): both
    pause at epoch 1, the better (by hand from epochs.csv) is promoted and stops at step 30, and the
    sweep stops. The same command without the stop resumes the sweep: that trial is promoted again,
    resumes from step 30 and, the better of one at epoch 2, trains to epoch 4. Its LR and losses are
    those of the same run trained straight through; the other trial pauses once, then is pruned."""
    sweep = tmp_path / "s"
    args = ["dataset=digits", "model=test_resnet", "trainer.progress_bar=false", "device=cpu", "epochs=4",
            "hydra/sweeper=lr_search", "hydra/sweeper/sampler=grid", "hydra/sweeper/pruner=asha_promotion",
            "hydra.sweeper.pruner.reduction_factor=2", "lr0=0.01,0.1", "hydra.sweeper.n_trials=2"]
    proc = multirun(sweep, *args, "trainer.stop_after_steps=30")
    assert proc.returncode == 1, proc.stderr[-3000:]  # a job did not complete
    assert "a trial was stopped: the sweep stops" in proc.stdout + proc.stderr
    curves = {n: [float(r["val/acc"]) for r in read_csv(sweep / str(n) / "epochs.csv")] for n in (0, 1)}
    best = max((0, 1), key=lambda n: (curves[n][0], -n))
    summary = json.loads((sweep / str(best) / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["steps"] == 30
    assert json.loads((sweep / str(1 - best) / "summary.json").read_text())["pruned"]["rung"] == 1

    proc = multirun(sweep, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    states = {t.number: t.state.name for t in optuna.load_study(study_name="lr_search", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sweep / "optuna_journal.log")))).get_trials()}
    assert states == {best: "COMPLETE", 1 - best: "PRUNED"}  # no trial run again
    summary = json.loads((sweep / str(best) / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 92
    told = [o for o in summary["overrides"] if not o.startswith("search=")]
    train_in_process(tmp_path / "straight", *told)
    paused, straight = read_csv(sweep / str(best) / "steps.csv"), read_csv(tmp_path / "straight" / "steps.csv")
    assert [(r["step"], r["lr"], r["loss"]) for r in paused] == [(r["step"], r["lr"], r["loss"]) for r in straight]


class _Trial:
    """What RayPromotionASHA reads of a Ray trial: its id and status."""

    def __init__(self, number):
        self.trial_id, self.status = f"abc_{number:05d}", "PENDING"


class _Controller:
    def __init__(self, trials):
        self.trials = trials

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial):
        trial.status = "TERMINATED"


def test_the_ray_scheduler_runs_the_same_jobs_pausing_and_resuming_trials():
    """RayPromotionASHA driven as Ray drives it (one worker: choose a trial, feed its epochs' results
    until it answers PAUSE or the trial ends), on the trials of
    test_trials_that_improve_one_after_another_do_not_break_the_budget: the same jobs in the same
    order, and the paused trials left at the end are stopped."""
    pytest.importorskip("ray.tune")
    jobs, trained, trials = _drive_ray(ray_starts_pending=False)
    assert jobs == [(0, 1), (1, 1), (2, 1), (3, 1), (3, 4), (4, 1), (5, 1), (6, 1), (7, 1), (7, 4), (8, 1), (7, 16)]
    assert sum(trained.values()) == 27
    assert [t.status for t in trials] == ["TERMINATED"] * 9  # the paused ones stopped at the end


def test_trials_ray_starts_by_itself_are_counted():
    """Ray also starts pending trials without asking the scheduler (here: whenever the worker is
    free, before the scheduler's choice): new trials then run before promotions, but each pauses at
    epoch 1, at most floor(9/4) = 2 go past it, and the best of those at epoch 4 trains to 16."""
    jobs, trained, trials = _drive_ray(ray_starts_pending=True)
    assert jobs[:9] == [(n, 1) for n in range(9)]  # all new trials first
    assert jobs[9:] == [(8, 4), (7, 4), (8, 16)]  # the top 2 of 9 at epoch 1, then the better at 4
    assert sum(trained.values()) == 27 and [t.status for t in trials] == ["TERMINATED"] * 9


def _drive_ray(ray_starts_pending):
    """RayPromotionASHA driven as Ray drives it with one worker, on trial n's value n + epochs/100:
    choose a trial (or, with ``ray_starts_pending``, start the first pending trial itself), feed its
    epochs until it answers PAUSE or ends. The jobs as (trial, epochs trained after), the epochs of
    each trial, the trials."""
    pytest.importorskip("ray.tune")
    from framework.search.ray_promotion import RayPromotionASHA
    from framework.search.ray_trainable import trial_index

    scheduler = RayPromotionASHA("epochs_trained", 16, 1, 4, 9, trial_index)
    scheduler.set_search_properties("val/acc", "max")
    trials = [_Trial(n) for n in range(9)]
    controller = _Controller(trials)
    for t in trials:
        scheduler.on_trial_add(controller, t)
    trained = {n: 0 for n in range(9)}
    jobs = []
    while True:
        pending = [t for t in trials if t.status == "PENDING"]
        trial = pending[0] if ray_starts_pending and pending else scheduler.choose_trial_to_run(controller)
        if trial is None:
            break
        n = trial_index(trial.trial_id)
        trial.status = "RUNNING"
        while True:
            trained[n] += 1
            decision = scheduler.on_trial_result(controller, trial, {"epochs_trained": trained[n],
                                                                      "val/acc": n + trained[n] / 100})
            if trained[n] == 16:
                scheduler.on_trial_complete(controller, trial, {"epochs_trained": 16})
                trial.status = "TERMINATED"
                break
            if decision == "PAUSE":
                trial.status = "PAUSED"
                break
        jobs.append((n, trained[n]))
    return jobs, trained, trials


def test_the_ray_scheduler_is_refilled_from_results_jsonl_on_resume(tmp_path):
    """An interrupted search: trials 0-3 reported epoch 1 (trial n: n + 0.01), trial 3 was promoted and
    reported epoch 2 before the interruption. Refilled from results.jsonl, trial 3 (restored by Ray
    as pending) waits at epoch 2, the best of rung 1's four: promoted again to 4 epochs; then the
    first trial never started (4)."""
    pytest.importorskip("ray.tune")
    from framework.search.ray_promotion import RayPromotionASHA
    from framework.search.ray_trainable import trial_index

    rows = [{"trial_id": f"abc_{n:05d}", "epochs_trained": 1, "val/acc": n + 0.01} for n in range(4)]
    rows.append({"trial_id": "abc_00003", "epochs_trained": 2, "val/acc": 3.02})
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"trial_id": "abc_0')
    scheduler = RayPromotionASHA("epochs_trained", 16, 1, 4, 9, trial_index)
    scheduler.set_search_properties("val/acc", "max")
    assert scheduler.seed(tmp_path / "results.jsonl") == 5  # the cut last line is skipped
    trials = [_Trial(n) for n in range(9)]
    for t in trials[:3]:
        t.status = "PAUSED"
    controller = _Controller(trials)
    for t in trials:
        scheduler.on_trial_add(controller, t)
    assert scheduler.choose_trial_to_run(controller) is trials[3] and scheduler.records[3].until == 4
    trials[3].status = "RUNNING"
    assert scheduler.choose_trial_to_run(controller) is trials[4] and scheduler.records[4].until == 1


def test_evolution_draws_parents_from_trials_waiting_at_a_rung():
    """The mutation sampler's ranking (lr_evolve) with ASHA with promotions: a trial waiting at epoch 4
    ranks above one pruned at epoch 1 and below a completed one; a running trial not waiting (its
    job not back yet) is no parent."""
    from framework.search.evolve import PARENT_STATES, rank_trials

    study = optuna.create_study(direction="maximize")
    dist = {"lr0": optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)}
    done = optuna.trial.create_trial(params={"lr0": 0.1}, distributions=dist, value=0.5, intermediate_values={16: 0.5})
    pruned = optuna.trial.create_trial(params={"lr0": 0.2}, distributions=dist, state=optuna.trial.TrialState.PRUNED,
                                       intermediate_values={1: 0.9})
    study.add_trials([done, pruned])
    waiting, running = study.ask(dist), study.ask(dist)
    for trial, curve in ((waiting, {1: 0.3, 4: 0.4}), (running, {1: 0.95})):
        for step, value in curve.items():
            trial.report(value, step)
    waiting.set_user_attr("paused_at", 4)
    ranked = rank_trials(study, study.get_trials(states=PARENT_STATES))
    assert [t.number for t in ranked] == [0, waiting.number, 1]


@pytest.mark.long
def test_a_promotion_whose_job_fails_before_training_is_failed_not_retried(tmp_path):
    """Job folders named trial_<n> (not the job number: new trials and promotions launched apart, a
    promotion placed by a quoted hydra.sweep.subdir). 2 trials, rungs 1, 2, 4, every job stopped at
    step 6 (epoch 1 ends at step 4): both pause at epoch 1, the better is promoted and stops. Its
    checkpoint is then damaged: the resumed sweep promotes it again, its job fails before training
    (the folder keeps the stopped summary), so it is failed, keeps its place, and the other trial
    trains to the end (by rule 3, twice)."""
    sweep = tmp_path / "s"
    args = [*TINY, "device=cpu", "trainer.progress_bar=false", "epochs=4", "hydra/sweeper=lr_search",
            "hydra/sweeper/sampler=grid", "hydra/sweeper/pruner=asha_promotion", "hydra.sweeper.pruner.reduction_factor=2",
            "lr0=0.01,0.1", "hydra.sweeper.n_trials=2", "hydra.sweep.subdir=trial_${hydra.job.num}"]
    proc = multirun(sweep, *args, "trainer.stop_after_steps=6")
    assert proc.returncode == 1, proc.stderr[-3000:]
    curves = {n: [float(r["val/acc"]) for r in read_csv(sweep / f"trial_{n}" / "epochs.csv")] for n in (0, 1)}
    best = max((0, 1), key=lambda n: (curves[n][0], -n))
    assert json.loads((sweep / f"trial_{best}" / "summary.json").read_text())["steps"] == 6
    (sweep / f"trial_{best}" / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")

    proc = multirun(sweep, *args)
    assert "its promoted job trained nothing" in proc.stdout + proc.stderr, proc.stderr[-3000:]
    study = optuna.load_study(study_name="lr_search", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(sweep / "optuna_journal.log"))))
    assert {t.number: t.state.name for t in study.get_trials()} == {best: "FAIL", 1 - best: "COMPLETE"}
    other = json.loads((sweep / f"trial_{1 - best}" / "summary.json").read_text())
    assert other["status"] == "completed" and other["steps"] == 16
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["trial_0", "trial_1"]


def test_a_promotion_an_interrupted_sweep_stopped_goes_on_first():
    """Trial 1 was sent from epoch 1 to 4 and stopped at epoch 2 (its sweep interrupted): on resume it
    goes on to 4 before anything else, although trial 2 now leads epoch 1 and rung 1 has no free slot."""
    from framework.search.rungs import TrialRecord

    scheduler = _scheduler(min_resource=1, reduction_factor=4, max_resource=16)
    trials = [TrialRecord(0, {1: 0.5}, paused_at=1, until=1), TrialRecord(1, {1: 0.6, 2: 0.7}, paused_at=1, until=4),
              TrialRecord(2, {1: 0.9}, paused_at=1, until=1), TrialRecord(3, {1: 0.1}, paused_at=1, until=1)]
    job = scheduler.next_job(trials, 4, 9, set(), maximize=True)
    assert (job.number, job.until) == (1, 4)
    job = scheduler.next_job(trials, 4, 9, {1}, maximize=True)
    assert (job.number, job.until) == (None, 1)  # trial 1 running: rung 1's one slot is its, so a new trial


def test_a_resumed_grid_keeps_its_order():
    """A resumed sweep reseeds its sampler (seed + trials held), but not a grid: its seed orders the
    grid, and the trials already run hold their place in that order (another seed would repeat a
    point and skip another)."""
    from framework.search.space import parse_space
    from framework.search.sweeper import LRSearchSweeperImpl

    sweeper = LRSearchSweeperImpl(sampler={"_target_": "optuna.samplers.GridSampler", "seed": 5})
    space = parse_space({}, ["lr0=0.001,0.015,0.07"])
    orders = []
    for offset in (0, 2):
        study = optuna.create_study(sampler=sweeper._sampler(space, seed_offset=offset))
        orders.append([study.ask(space.distributions).params["lr0"] for _ in range(3)])
    assert orders[0] == orders[1] and sorted(orders[0]) == [0.001, 0.015, 0.07]
