"""hydra/sweeper=lr_search: the search space, pruned trials checked against Optuna's own pruner on
the values the jobs recorded, a resumed study, the presets and the one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import TINY, read_csv, train_in_process
from tests.test_report import multirun

optuna = pytest.importorskip("optuna")

pytestmark = pytest.mark.slow

DIGITS = ["dataset=digits", "model=test_resnet", "trainer.progress_bar=false", "device=cpu", "epochs=2"]


def _study(sweep):
    from framework.search.study import open_storage, read_spec

    spec = read_spec(sweep / "study.json")
    return optuna.load_study(study_name=spec["study_name"], storage=open_storage(spec["storage"]))


def test_the_space_reads_hydra_sweep_syntax():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from framework.errors import ConfigError
    from framework.search.space import override_value, parse_space

    space = parse_space({"lr0": "tag(log, interval(1e-4, 1.0))", "scheduler": "choice(cosine, step)"},
                        ["epochs=3", "+foo=1,2", "warmup_steps=range(0, 30, 10)", "lrf=interval(0.01, 0.5)",
                         "epochs=tag(int, interval(2, 8))",
                         "scheduler=cosine,wsd"])  # the command line wins over params
    assert space.distributions == {"lr0": FloatDistribution(1e-4, 1.0, log=True),
                                   "scheduler": CategoricalDistribution(["cosine", "wsd"]),
                                   "foo": CategoricalDistribution([1, 2]),
                                   "warmup_steps": IntDistribution(0, 20, step=10),
                                   "lrf": FloatDistribution(0.01, 0.5), "epochs": IntDistribution(2, 8)}
    assert space.fixed == []  # epochs=3 was replaced by the command line's range
    assert space.overrides({"lr0": 0.1 + 0.2, "foo": 2, "scheduler": "wsd"}) == [
        "lr0=0.30000000000000004", "+foo=2", "scheduler=wsd"]  # repr: the float read back is the same
    assert space.size() is None  # intervals: no finite grid
    assert parse_space({}, ["lr0=1e-3,1e-2", "scheduler=cosine,step,wsd"]).size() == 6
    assert [override_value(v) for v in (None, True, "a b", "1e-3", "null")] == ["null", "true", "'a b'", "'1e-3'",
                                                                                 "'null'"]
    assert parse_space({}, ["epochs=3", "lr0=1e-3,1e-2"]).fixed == ["epochs=3"]
    assert parse_space({}, ["epochs=int(interval(2, 8))"]).distributions == {"epochs": IntDistribution(2, 8)}
    assert parse_space({}, ["lr0=1e-3,1e-2", "lrf=interval(0.1, 0.5)"]).probe() == {"lr0": 1e-3, "lrf": 0.1}
    with pytest.raises(ConfigError, match="optimizer.betas: a choice of lists or dicts is not supported"):
        parse_space({}, ["optimizer.betas=choice([0.9,0.99],[0.8,0.9])"])
    for bad, says in ((["lr0=interval(1, 0.1)"], "lr0=interval(1.0, 0.1): needs two numbers, low < high"),
                      (["lr0=tag(log, interval(0, 1))"], "(and low > 0 with tag(log, ...))"),
                      (["lr0=1e-3,1e-3"], "lr0: a value is listed twice"),
                      (["lr0=range(5, 1)"], "holds no value")):
        with pytest.raises(ConfigError, match=None) as info:
            parse_space({}, bad)
        assert says in str(info.value)
    with pytest.raises(ConfigError, match="the grid sampler needs listed values"):
        parse_space({}, ["lr0=interval(0.1, 1)"]).grid()


def test_pruned_trials_stop_where_optunas_pruner_says_with_two_parallel_workers(tmp_path):
    """4 trials of a grid over lr0 with the median pruner (2 start-up trials, judged from 1 epoch), two at
    a time on joblib: the two bad LRs of the second batch are pruned. Their decisions are
    replayed with Optuna's MedianPruner on the values the jobs wrote to epochs.csv."""
    sweep = tmp_path / "s"
    proc = multirun(sweep, *DIGITS, "hydra/sweeper=lr_search", "hydra/sweeper/sampler=grid", "lr0=1e-5,3e-5,0.1,0.3",
                    "hydra.sweeper.n_trials=4", "hydra.sweeper.pruner.n_startup_trials=2",
                    "hydra.sweeper.pruner.n_warmup_steps=1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                    "hydra.sweeper.n_jobs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = _study(sweep)
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert [t.number for t in trials] == [0, 1, 2, 3]
    curves = {}
    for t in trials:  # job n = trial n; what the study holds is what the run validated
        folder = sweep / str(t.number)
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["lr0"] == t.params["lr0"] and t.user_attrs["run_dir"] == str(folder)
        curves[t.number] = [float(r["val/acc"]) for r in read_csv(folder / "epochs.csv")]
        assert t.intermediate_values == pytest.approx(dict(enumerate(curves[t.number], start=1)), rel=1e-6)  # epochs trained
        state = {"completed": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED}
        assert t.state == state[summary["status"]]
    first, second = trials[:2], trials[2:]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in first)  # start-up: never pruned
    # Optuna's own MedianPruner, fed the first batch as the completed trials and each trial of the
    # second batch epoch by epoch: it prunes at the first epoch it says so, or never
    replay = optuna.create_study(direction="maximize",
                                 pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    for t in first:
        replay.add_trial(optuna.trial.create_trial(value=t.value, params=t.params, distributions=t.distributions,
                                                   intermediate_values=dict(enumerate(curves[t.number], start=1))))
    pruned = 0
    for t in second:
        probe = replay.ask()
        decided = None
        for epoch, value in enumerate(curves[t.number]):
            probe.report(value, epoch + 1)
            if probe.should_prune():
                decided = epoch
                break
        replay.tell(probe, state=optuna.trial.TrialState.FAIL)  # not a completed trial of the replay
        summary = json.loads((sweep / str(t.number) / "summary.json").read_text())
        if decided is None:
            assert summary["status"] == "completed" and len(curves[t.number]) == 2
            continue
        pruned += 1
        assert summary["status"] == "pruned" and summary["pruned"]["epoch"] == decided == len(curves[t.number]) - 1
        assert summary["steps"] == summary["pruned"]["step"] == 23 * (decided + 1)  # 1437 images / 64 -> 23 steps
        assert summary["pruned"]["pruner"] == "MedianPruner" and (sweep / str(t.number) / "checkpoints/last.pt").is_file()
    assert pruned == 2  # lr0 1e-5 and 3e-5 (the grid's seed-0 order puts 0.1 and 0.3 first)
    best = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert study.best_value == max(t.value for t in best) == max(max(curves[t.number]) for t in best)
    results = (sweep / "optimization_results.yaml").read_text()
    assert f"best_value: {study.best_value}" in results

    # a pruned trial continues with resume= like a stopped run, without reporting to the ended trial
    job = sweep / str(second[0].number)
    told = json.loads((job / "summary.json").read_text())["overrides"]
    train_in_process(job, *[o for o in told if not o.startswith("search=")], f"resume={job}")
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 46
    again = _study(sweep).trials[second[0].number]
    assert again.state == optuna.trial.TrialState.PRUNED and len(again.intermediate_values) == 1


def test_a_sweep_resumes_its_study_and_reruns_an_interrupted_trial(tmp_path):
    sweep = tmp_path / "s"
    args = [*TINY, "epochs=1", "device=cpu", "hydra/sweeper=lr_search", "lr0=tag(log, interval(1e-3, 0.1))",
            "hydra.sweeper.pruner.n_startup_trials=5"]
    proc = multirun(sweep, *args, "hydra.sweeper.n_trials=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    kept = {n: (sweep / str(n) / "summary.json").read_text() for n in (0, 1)}
    # a trial an interrupted sweep left running (asked, never told)
    study = _study(sweep)
    lost = study.ask({"lr0": optuna.distributions.FloatDistribution(1e-3, 0.1, log=True)})
    proc = multirun(sweep, *args, "hydra.sweeper.n_trials=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = sorted(_study(sweep).get_trials(), key=lambda t: t.number)
    states = [t.state.name for t in trials]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]  # 2 kept + the lost one again + 1 new
    # the resumed sampler is reseeded (seed + trials held): its first draw is not the first sweep's first draw
    assert trials[4].params["lr0"] not in (trials[0].params["lr0"], trials[1].params["lr0"])
    assert trials[2].user_attrs["interrupted"] is True and trials[3].params == lost.params == trials[2].params
    assert {n: (sweep / str(n) / "summary.json").read_text() for n in (0, 1)} == kept  # not run again
    assert not (sweep / "2").exists() and json.loads((sweep / "3" / "summary.json").read_text())["lr0"] == lost.params["lr0"]


@pytest.mark.long  # the rule itself: test_the_budget_rule_by_hand
def test_a_budget_launches_a_trial_only_while_a_full_run_still_fits(tmp_path):
    """hydra.sweeper.budget_runs=2.5 (full runs), a grid of 4 lr0 (seed 6: 0.1, 3e-5, 0.3, 1e-5) with the
    median pruner judging from the first epoch once 1 trial has completed (its defaults): 0.1 trains its full run
    (1 spent), 3e-5 is pruned after 1 of its 2 epochs (1.5 spent), so 0.3 still fits (1 left) and
    after it less than 1 is left whatever it did: 3 of the 4 trials run. Before each, the shares of
    a full run the earlier ones trained (steps / planned steps, from their summaries) left at least
    1; the study holds each share. Resumed with the same budget it starts nothing; with 4 it runs
    the grid's last trial."""
    from framework.search.budget import spent_runs

    sweep = tmp_path / "s"
    args = [*DIGITS, "hydra/sweeper=lr_search", "hydra/sweeper/sampler=grid", "lr0=0.1,0.3,1e-5,3e-5",
            "hydra.sweeper.sampler.seed=6", "hydra.sweeper.n_trials=4", "hydra.sweeper.budget_runs=2.5"]
    proc = multirun(sweep, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted((int(p.name) for p in sweep.iterdir() if p.name.isdigit()))
    summaries = [json.loads((sweep / str(n) / "summary.json").read_text()) for n in jobs]
    shares = [s["steps"] / s["planned_steps"] for s in summaries]
    assert summaries[0]["planned_steps"] == 46 and summaries[0]["status"] == "completed"  # 2 epochs of 23 steps
    assert [s["lr0"] for s in summaries] == [0.1, 3e-5, 0.3] and shares[:2] == [1.0, 0.5]
    assert summaries[1]["status"] == "pruned" and summaries[1]["pruned"]["epoch"] == 0
    for k in range(len(shares)):
        assert 2.5 - sum(shares[:k]) >= 1  # a full run fitted when trial k was launched
    assert 2.5 - sum(shares) < 1  # the sweep ended because the next one did not
    assert spent_runs(_study(sweep)) == pytest.approx(sum(shares), abs=1e-12)
    # the same command resumes the study and counts what it spent: nothing more fits in 2.5 runs
    again = multirun(sweep, *args)
    assert again.returncode == 0 and sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1", "2"]
    # a larger budget goes on where it stopped: with 1.5 more, one more trial (the grid's last, 1e-5)
    more = multirun(sweep, *args[:-1], f"hydra.sweeper.budget_runs={2.5 + 1.5}")
    assert more.returncode == 0, more.stderr[-3000:]
    assert json.loads((sweep / "3" / "summary.json").read_text())["lr0"] == 1e-5 and not (sweep / "4").exists()


@pytest.mark.parametrize("pruner", ["median", "successive_halving", "asha_promotion", "hyperband", "none"])
def test_the_tpe_preset_builds_with_every_pruner(pruner):
    """A preset sets no pruner key, so any pruner group option composes with it and is built."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from framework.registry import CONF_DIR
    from framework.search.study import build_pruner

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=lr_tpe", f"hydra/sweeper/pruner={pruner}"],
                      return_hydra_config=True)
    built = build_pruner(OmegaConf.to_container(cfg.hydra.sweeper.pruner, resolve=True))
    assert type(built).__name__ == {"median": "MedianPruner", "successive_halving": "SuccessiveHalvingPruner",
                                    "asha_promotion": "PromotionASHA", "hyperband": "HyperbandPruner",
                                    "none": "NopPruner"}[pruner]


@pytest.mark.parametrize("preset, sampler, pruner", [("lr_asha", "RandomSampler", "SuccessiveHalvingPruner"),
                                                     ("lr_tpe", "TPESampler", "MedianPruner"),
                                                     ("lr_evolve", "MutationSampler", "PromotionASHA")])
def test_presets_compose_a_sampler_and_pruner(preset, sampler, pruner):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from framework.registry import CONF_DIR
    from framework.search.space import parse_space
    from framework.search.study import build_pruner
    from framework.search.sweeper import LRSearchSweeperImpl

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"hparams_search={preset}"], return_hydra_config=True)
    node = OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
    assert node["_target_"] == "hydra_plugins.lrframe_search.LRSearchSweeper" and node["direction"] == "maximize"
    sweeper = LRSearchSweeperImpl(**{k: v for k, v in node.items() if not k.startswith("_")})
    space = parse_space(sweeper.params, [])
    assert type(sweeper._sampler(space)).__name__ == sampler
    assert type(build_pruner(sweeper.pruner_cfg)).__name__ == pruner
    assert space.distributions["lr0"] == optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)


def test_a_grid_trial_left_running_is_requeued_without_the_grid_stopping_the_sweep():
    from framework.search.budget import spent_runs
    from framework.search.study import counted, requeue_interrupted

    study = optuna.create_study(sampler=optuna.samplers.GridSampler({"lr0": [0.1, 0.01]}, seed=0))
    dist = {"lr0": optuna.distributions.CategoricalDistribution([0.1, 0.01])}
    asked = [study.ask(dist) for _ in range(2)]  # the whole grid, both left running by a killed sweep
    assert requeue_interrupted(study) == 2  # GridSampler's Study.stop() did not escape
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL", "WAITING", "WAITING"]
    assert [study.ask(dist).params for _ in range(2)] == [t.params for t in asked]  # the next asks rerun them
    assert counted(study) == 0  # interrupted trials do not count towards n_trials
    assert spent_runs(study) == 0  # their jobs left no folder: nothing trained


def test_a_trial_is_reported_every_epoch_and_never_pruned_at_its_last(tmp_path):
    """OptunaTrial with a pruner that prunes every value it is asked about (ThresholdPruner,
    lower=2 > any accuracy): a 2-epoch run is pruned after its first epoch; a 1-epoch run reports
    its only epoch (the last) and completes: a run that reached step T is complete."""
    from framework.run import train
    from framework.search.study import OptunaTrial
    from tests.helpers import compose_cfg

    spec = {"study_name": "s", "storage": f"journal:{tmp_path / 'j.log'}", "direction": "maximize",
            "pruner": {"_target_": "optuna.pruners.ThresholdPruner", "lower": 2.0}}
    (tmp_path / "study.json").write_text(json.dumps(spec))
    from framework.search.study import open_storage

    study = optuna.create_study(study_name="s", storage=open_storage(spec["storage"]), direction="maximize")
    for epochs, status, steps in ((2, "pruned", 4), (1, "completed", 4)):  # tiny: 4 steps per epoch
        number = study.ask().number
        run = tmp_path / f"e{epochs}"
        hook = f"search={{_target_:{OptunaTrial.__module__}.OptunaTrial,study:'{tmp_path / 'study.json'}',trial:{number}}}"
        train(compose_cfg(*TINY, f"epochs={epochs}", "device=cpu", hook), run_dir=run)
        summary = json.loads((run / "summary.json").read_text())
        acc = float(read_csv(run / "epochs.csv")[0]["val/acc"])
        assert summary["status"] == status and summary["steps"] == steps
        trial = study.trials[number]
        assert trial.intermediate_values == pytest.approx({1: acc})  # step = epochs trained
        assert trial.state.name == ("PRUNED" if status == "pruned" else "RUNNING")  # the sweeper tells a completed one
        assert trial.user_attrs["status"] == status and trial.user_attrs["run_dir"] == str(run)
    assert json.loads((tmp_path / "e2" / "summary.json").read_text())["pruned"] == {
        "epoch": 0, "step": 4, "trial": 0, "pruner": "ThresholdPruner", "value": pytest.approx(
            float(read_csv(tmp_path / "e2" / "epochs.csv")[0]["val/acc"]))}


def test_the_mutation_sampler_mutates_one_of_the_best_trials_as_ultralytics_tuner_does():
    import numpy as np
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from framework.search.evolve import MutationSampler

    dists = {"lr0": FloatDistribution(1e-4, 1.0, log=True), "epochs": IntDistribution(1, 9),
             "optimizer": CategoricalDistribution(["sgd", "adamw"])}
    study = optuna.create_study(direction="maximize",
                                sampler=MutationSampler(parents=2, mutation_prob=1.0, sigma=0.2, seed=3))
    made = {"A": ({"lr0": 0.01, "epochs": 5, "optimizer": "sgd"}, 0.90, "COMPLETE", {1: 0.5, 5: 0.9}),
            "B": ({"lr0": 0.02, "epochs": 4, "optimizer": "adamw"}, 0.95, "COMPLETE", {1: 0.6, 4: 0.95}),
            "C": ({"lr0": 0.5, "epochs": 9, "optimizer": "sgd"}, None, "PRUNED", {1: 0.99, 3: 0.99}),
            "D": ({"lr0": 0.9, "epochs": 9, "optimizer": "sgd"}, None, "PRUNED", {1: 0.999})}
    for params, value, state, curve in made.values():
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value,
                                                  state=getattr(optuna.trial.TrialState, state),
                                                  intermediate_values=curve))
    new = study.ask(dists).params
    # by hand: ranked B (0.95), A (0.90), then the pruned (C reached step 3, D step 1); parents = top 2,
    # weights 2:1; gains clip(1 + z * u * 0.2, 0.3, 3) for lr0 and epochs; the categorical flips (p = 1)
    rng = np.random.RandomState(3)
    parent = [made["B"][0], made["A"][0]][rng.choice(2, p=[2 / 3, 1 / 3])]
    rng.random_sample(2)  # the mutation mask: all True at mutation_prob 1
    z, u = rng.randn(2), rng.random_sample()
    gains = np.clip(1 + z * u * 0.2, 0.3, 3.0)
    rng.random_sample()  # the categorical's flip: True
    expected = {"lr0": min(max(parent["lr0"] * gains[0], 1e-4), 1.0),
                "epochs": min(max(int(round(parent["epochs"] * gains[1])), 1), 9),
                "optimizer": ["sgd", "adamw"][rng.randint(2)]}
    assert new == pytest.approx(expected) and new != parent
    # a key at 0 (warmup_epochs) moves by |g - 1| of its range instead of staying 0
    zero = optuna.create_study(sampler=MutationSampler(mutation_prob=1.0, seed=1))
    warm = {"warmup_epochs": FloatDistribution(0.0, 1.0)}
    zero.add_trial(optuna.trial.create_trial(params={"warmup_epochs": 0.0}, distributions=warm, value=0.5))
    rng = np.random.RandomState(1)
    rng.choice(1, p=[1.0]), rng.random_sample(1)
    z, u = rng.randn(1), rng.random_sample()
    assert zero.ask(warm).params["warmup_epochs"] == pytest.approx(min(abs(np.clip(1 + z * u * 0.2, 0.3, 3)[0] - 1), 1))
    # a fresh study starts from x0 (the configured values), then draws at random until a trial ends
    fresh = optuna.create_study(sampler=MutationSampler(x0={"lr0": 0.01, "epochs": 99}, seed=0))
    first = fresh.ask(dists).params
    assert first["lr0"] == 0.01 and 1 <= first["epochs"] <= 9  # 99 is out of bounds: drawn instead


def test_a_presets_key_the_config_lacks_is_not_searched():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from framework.registry import CONF_DIR
    from framework.search.sweeper import LRSearchSweeperImpl

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=lr_evolve", "optimizer=adamw"], return_hydra_config=True)
    node = OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
    sweeper = LRSearchSweeperImpl(**{k: v for k, v in node.items() if not k.startswith("_")})
    sweeper.config = cfg
    assert set(sweeper._known_params([])) == {"lr0", "lrf", "warmup_epochs", "optimizer.weight_decay"}  # no momentum
    kept = sweeper._known_params(["optimizer.momentum=interval(0.8, 0.9)"])  # typed by the user: theirs to fix
    assert "optimizer.momentum" in kept


@pytest.mark.parametrize("args, says", [
    (["hydra.sweeper.n_trials=0"], "error: hydra.sweeper.n_trials=0: must be an integer >= 1"),
    (["hydra.sweeper.direction=up"], "error: hydra.sweeper.direction=up: use maximize or minimize"),
    (["hydra/sweeper/sampler=grid"], "error: hydra.sweeper.params.lr0: the grid sampler needs listed values"),
    (["hydra.sweeper.storage=nowhere"], "error: hydra.sweeper.storage=nowhere: not a database URL nor a journal file"),
    (["hydra.sweeper.storage=postgresql://u@127.0.0.1:9/db"], "error: hydra.sweeper.storage=postgresql://u@127.0.0.1:9/db:"),
    (["lr00=1e-3,1e-2"], "error: lr00=0.001: unknown key 'lr00' (did you mean lr0?)"),
    (["hydra/sweeper/pruner=asha_promotion", "trainer.save_checkpoints=false"],
     "error: trainer.save_checkpoints=false: hydra/sweeper/pruner=asha_promotion resumes a promoted trial"),
    (["hydra/sweeper/pruner=asha_promotion", "hydra.sweeper.pruner.reduction_factor=1"],
     "error: hydra.sweeper.pruner.reduction_factor=1: must be an integer >= 2"),
    (["hydra.sweeper.budget_runs=0.5"], "error: hydra.sweeper.budget_runs=0.5: must be a number >= 1 (full runs"),
    (["hydra/sweeper/pruner=asha_promotion", "hydra.sweeper.budget_runs=3"],
     "error: hydra.sweeper.budget_runs=3: hydra/sweeper/pruner=asha_promotion bounds the steps itself"),
    (["hparams_search=lr_tpe", "hydra/sweeper/pruner=asha_promotion"],  # the preset's budget, named to unset
     "error: hydra.sweeper.budget_runs=3: hydra/sweeper/pruner=asha_promotion bounds the steps itself (n_trials and "
     "its rungs); set hydra.sweeper.budget_runs=null"),
    (["hydra/sweeper/pruner=asha_promotion", "epochs=16", "hydra.sweeper.pruner.max_resource=4"],
     "error: hydra.sweeper.pruner.max_resource=4: the last rung is a full run, the trials' epochs=16; set "
     "hydra.sweeper.pruner.max_resource='${epochs}'"),
])
def test_bad_sweeper_settings_are_one_line_before_any_job(tmp_path, args, says):
    sweep = tmp_path / "s"
    proc = multirun(sweep, *TINY, "hydra/sweeper=lr_search", "lr0=tag(log, interval(1e-3, 0.1))", *args)
    assert proc.returncode == 2 and proc.stderr.startswith(says), proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not sweep.exists()  # no job ran, no folder made


@pytest.mark.parametrize("url, module, package", [
    ("postgresql://u@127.0.0.1:9/db", "psycopg", "'psycopg[binary]'"),  # SQLAlchemy >= 2.1: psycopg 3
    ("postgresql+psycopg2://u@127.0.0.1:9/db", "psycopg2", "psycopg2-binary"),
    ("mysql+mysqldb://u@127.0.0.1:9/db", "MySQLdb", "mysqlclient"),
    ("postgresql+pg8000://u@127.0.0.1:9/db", "pg8000", "pg8000"),  # not in the table: the module's name
])
def test_a_missing_database_driver_names_the_package_to_install(monkeypatch, url, module, package):
    """SQLAlchemy imports the URL's driver (made missing here, installed or not): the line names
    the pip package."""
    import sqlalchemy

    from framework.errors import ConfigError
    from framework.search.study import open_storage

    if url.startswith("postgresql://") and tuple(int(v) for v in sqlalchemy.__version__.split(".")[:2]) < (2, 1):
        pytest.skip("SQLAlchemy < 2.1 reads postgresql:// with psycopg2")
    monkeypatch.setitem(__import__("sys").modules, module, None)  # import fails: ModuleNotFoundError(name=module)
    with pytest.raises(ConfigError) as info:
        open_storage(url)
    assert str(info.value).startswith(f"hydra.sweeper.storage={url}: needs the database driver {module} (")
    assert str(info.value).endswith(f"pip install {package}, or use null (a journal file in the sweep folder)")


def test_a_folder_of_another_study_is_refused_and_left_as_it_was(tmp_path):
    from tests.helpers import folder_bytes

    sweep = tmp_path / "s"
    args = [*TINY, "epochs=1", "device=cpu", "lr0=tag(log, interval(1e-3, 0.1))", "hydra.sweeper.n_trials=1"]
    assert multirun(sweep, *args, "hydra/sweeper=lr_search").returncode == 0
    before = folder_bytes(sweep)
    proc = multirun(sweep, *args, "hparams_search=lr_tpe")  # another study name: lr_tpe
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: hydra.sweep.dir={sweep}: holds study lr_search, not lr_tpe; resume it with "
        "hydra.sweeper.study_name=lr_search (or its preset), or choose a new folder")
    assert folder_bytes(sweep) == before
    empty = tmp_path / "reserved"  # a folder reserved for the sweep (as ${unique_dir:...} does) and left empty
    empty.mkdir()
    assert multirun(empty, *args, "hydra/sweeper=lr_search", "hydra.sweeper.n_trials=0").returncode == 2
    assert not empty.exists()


def test_a_new_folder_does_not_join_a_shared_storages_study(tmp_path):
    """Two sweeps of one preset (one study_name) on a storage they share (a team's database; here a
    journal file outside both folders): the second folder is refused in one line, nothing is made,
    and the first study keeps its one trial; resuming the first folder without the storage is
    refused (its jobs would be run again in a new study), with it the resume works."""
    shared = tmp_path / "team.journal"
    args = [*TINY, "epochs=1", "device=cpu", "lr0=tag(log, interval(1e-3, 0.1))", "hydra/sweeper=lr_search",
            f"hydra.sweeper.storage={shared}"]
    first, second = tmp_path / "a", tmp_path / "b"
    assert multirun(first, *args, "hydra.sweeper.n_trials=1").returncode == 0
    proc = multirun(second, *args, "hydra.sweeper.n_trials=2")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: hydra.sweeper.study_name=lr_search: journal:{shared} already holds this study (1 trial(s), of "
        f"{first}); resume it with hydra.sweep.dir={first}, or start a new one with "
        "hydra.sweeper.study_name=<another name>")
    assert not second.exists()
    from tests.helpers import folder_bytes

    before = folder_bytes(first)  # resuming without the storage: the folder's study is elsewhere
    proc = multirun(first, *[a for a in args if not a.startswith("hydra.sweeper.storage=")], "hydra.sweeper.n_trials=2")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: hydra.sweep.dir={first}: its study lr_search is in journal:{shared}, not "
        f"journal:{first / 'optuna_journal.log'}; resume it with hydra.sweeper.storage=journal:{shared}")
    assert folder_bytes(first) == before
    assert multirun(first, *args, "hydra.sweeper.n_trials=2").returncode == 0
    assert sorted(t.number for t in _study(first).trials) == [0, 1]


def test_a_study_made_outside_any_sweep_folder_is_not_joined(tmp_path):
    """A study of that name with a trial but no job folder (made by Optuna directly): refused, one
    line, nothing made."""
    from framework.search.study import open_storage

    shared = tmp_path / "team.journal"
    study = optuna.create_study(study_name="lr_search", storage=open_storage(f"journal:{shared}"), direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))
    sweep = tmp_path / "s"
    proc = multirun(sweep, *TINY, "epochs=1", "device=cpu", "lr0=tag(log, interval(1e-3, 0.1))",
                    "hydra/sweeper=lr_search", f"hydra.sweeper.storage={shared}")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: hydra.sweeper.study_name=lr_search: journal:{shared} already holds this study (1 trial(s), of "
        "another sweep); resume it from that sweep's folder, or start a new one with "
        "hydra.sweeper.study_name=<another name>")
    assert not sweep.exists()


def test_missing_optuna_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "optuna", None)
    proc = multirun(tmp_path / "s", *TINY, "hydra/sweeper=lr_search", "lr0=tag(log, interval(1e-3, 0.1))")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: hydra/sweeper=lr_search: needs Optuna (>= 4); pip install 'lrframe[search]'"


def test_storage_urls():
    from pathlib import Path

    from framework.search.study import storage_url

    sweep = Path("/s")
    assert storage_url(None, sweep) == "journal:/s/optuna_journal.log"
    assert storage_url("journal:/x/j.log", sweep) == "journal:/x/j.log"
    assert storage_url("/x/study.journal", sweep) == "journal:/x/study.journal"
    assert storage_url("sqlite:///x.db", sweep) == "sqlite:///x.db"


@pytest.fixture
def postgres_url(tmp_path_factory):
    """A PostgreSQL server of its own (initdb, pg_ctl) on a free port, with a database ``optuna``,
    for as long as the test runs; skipped where the server's binaries or psycopg 3 are missing."""
    import importlib.util
    import os
    import pwd
    import shutil
    import socket
    import subprocess
    import tempfile

    if not (shutil.which("initdb") and shutil.which("pg_ctl")) or importlib.util.find_spec("psycopg") is None:
        pytest.skip("needs PostgreSQL's initdb and pg_ctl, and psycopg 3 (pip install 'psycopg[binary]')")
    run_as: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root: as the postgres user, where there is one
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a postgres user to run the server")
        run_as = ["runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="lr_pg_"))  # outside pytest's 0700 folders, which that user cannot enter
    data = base / "data"
    data.mkdir()
    if run_as:
        for path in (base, data):
            os.chown(path, user.pw_uid, user.pw_gid)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*run_as, "initdb", "-D", str(data), "-U", "lr", "--auth=trust"], check=True, capture_output=True)
    subprocess.run([*run_as, "pg_ctl", "-D", str(data), "-w", "-l", str(base / "server.log"), "-o",
                    f"-p {port} -k {base} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        subprocess.run([*run_as, "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "lr", "optuna"], check=True,
                       capture_output=True)
        yield f"postgresql://lr@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*run_as, "pg_ctl", "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.long
@pytest.mark.parametrize("launcher", [["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                                      ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"]],
                         ids=["joblib", "submitit_local"])
def test_a_study_on_postgresql_with_two_parallel_jobs_prunes_and_resumes(tmp_path, postgres_url, launcher):
    """The cluster setup on one machine: the study in a PostgreSQL database, two jobs at a time
    (joblib processes, or submitit's, as submitit_slurm submits them: pickled, each job in a
    process of its own), ASHA (reduction factor 2: rungs after 1 and 2 epochs) over a 4-value grid
    whose seed-0 order is 0.1, 0.3, then 1e-5, 3e-5. A first sweep of 2 trials (the first to reach
    the rung goes on; the other only if better), then the same command with 4 resumes the study:
    the ended trials are kept as they were, the two low LRs are pruned after their first epoch
    (each below the best value at that rung), and what the database holds is what each job
    validated."""
    sweep = tmp_path / "s"
    args = [*DIGITS, "hydra/sweeper=lr_search", "hydra/sweeper/sampler=grid", "lr0=1e-5,3e-5,0.1,0.3",
            "hydra/sweeper/pruner=successive_halving", "hydra.sweeper.pruner.reduction_factor=2",
            f"hydra.sweeper.storage={postgres_url}", *launcher, "hydra.sweeper.n_jobs=2"]
    proc = multirun(sweep, *args, "hydra.sweeper.n_trials=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((sweep / "study.json").read_text())["storage"] == postgres_url
    first = sorted(_study(sweep).trials, key=lambda t: t.number)
    assert [(t.number, t.params["lr0"]) for t in first] == [(0, 0.1), (1, 0.3)]
    assert optuna.trial.TrialState.COMPLETE in [t.state for t in first]  # the first at the rung goes on
    proc = multirun(sweep, *args, "hydra.sweeper.n_trials=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = _study(sweep)
    assert type(study._storage._backend).__name__ == "RDBStorage"
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [(t.state, t.intermediate_values) for t in trials[:2]] == [(t.state, t.intermediate_values) for t in first]
    curves = {}
    for t in trials:
        folder = sweep / str(t.number)
        summary = json.loads((folder / "summary.json").read_text())
        curves[t.number] = [float(r["val/acc"]) for r in read_csv(folder / "epochs.csv")]
        assert summary["lr0"] == t.params["lr0"]
        assert t.intermediate_values == pytest.approx(dict(enumerate(curves[t.number], start=1)), rel=1e-6)
    assert sorted(t.params["lr0"] for t in trials[2:]) == [1e-5, 3e-5]
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in trials[2:])  # the low LRs
    best_at_rung = max(c[0] for c in curves.values())
    for t in trials:
        summary = json.loads((sweep / str(t.number) / "summary.json").read_text())
        if t.state == optuna.trial.TrialState.PRUNED:  # after its first epoch, not the best there (top-k, k = 1)
            assert summary["status"] == "pruned" and summary["pruned"]["epoch"] == 0 and len(curves[t.number]) == 1
            assert curves[t.number][0] < best_at_rung
        else:
            assert summary["status"] == "completed" and len(curves[t.number]) == 2


def test_the_budget_rule_by_hand():
    from framework.search.budget import budget_error, trials_that_fit

    assert trials_that_fit(None, 100.0) == float("inf")
    assert [trials_that_fit(3, s) for s in (0.0, 0.5, 1.0, 2.25, 2.0, 3.0)] == [3, 2, 2, 0, 1, 0]
    assert 3.15 - (0.22 + 0.93) < 2 and trials_that_fit(3.15, 0.22 + 0.93) == 2  # 1.9999999999999998: 2 fit
    assert budget_error(None) is None and budget_error(1) is None and budget_error(3.15) is None
    for bad in (0.99, 0, -1, True, "3", float("nan"), float("inf")):
        assert budget_error(bad).startswith(f"hydra.sweeper.budget_runs={bad}: must be a number >= 1 (full runs")


def test_a_job_that_left_no_summary_is_charged_what_it_logged(tmp_path):
    """A job killed before it wrote summary.json (a lost node, an OOM kill) is charged the rows of
    its steps.csv over the planned steps it recorded at its start: 10 of 46; a whole run when it
    recorded none; what its summary says when it wrote one (23 of 46); 0 without a folder."""
    from framework.search.budget import SPENT_ATTR, record_spent, spent_runs

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    trials = [study.ask() for _ in range(4)]
    for n in range(3):
        folder = tmp_path / str(n)
        folder.mkdir()
        (folder / "steps.csv").write_text("step,lr\n" + "".join(f"{k},0.1\n" for k in range(10)))
        study._storage.set_trial_user_attr(trials[n]._trial_id, "run_dir", str(folder))
    study._storage.set_trial_user_attr(trials[0]._trial_id, "planned_steps", 46)
    (tmp_path / "2" / "summary.json").write_text(json.dumps({"status": "stopped", "steps": 23, "planned_steps": 46}))
    for t in trials:
        record_spent(study, t, None)
    shares = [study.user_attrs[f"{SPENT_ATTR}:{tmp_path.resolve() / str(n)}"] for n in range(3)]
    shares.append(study.user_attrs[f"{SPENT_ATTR}:trial 3"])
    assert shares == [10 / 46, 1.0, 0.5, 0.0] and spent_runs(study) == pytest.approx(10 / 46 + 1.5)


def test_the_promotion_checks_leave_a_searched_or_fixed_epochs_alone():
    from omegaconf import OmegaConf

    from framework.errors import ConfigError
    from framework.search.promotion import check_promotion
    from framework.search.space import parse_space

    config = OmegaConf.create({"epochs": 16, "trainer": {"save_checkpoints": True}})
    pruner = {"_target_": "framework.search.promotion.PromotionASHA", "max_resource": 8}
    check_promotion(pruner, config, parse_space({}, ["epochs=tag(int, interval(4, 16))"]), None)  # the user's call
    check_promotion(pruner, config, parse_space({"epochs": "8"}, ["lr0=1e-3,1e-2"]), None)  # every trial's 8
    with pytest.raises(ConfigError, match=r"max_resource=8: the last rung is a full run, the trials' epochs=16"):
        check_promotion(pruner, config, parse_space({}, ["lr0=1e-3,1e-2"]), None)
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.pruner.max_resource=abc: must be an integer >= 1$"):
        check_promotion({**pruner, "max_resource": "abc"}, config, parse_space({}, ["lr0=1e-3,1e-2"]), None)
    with pytest.raises(ConfigError, match=r"max_resource=16: .* epochs=8"):  # absent: the class's default, 16
        check_promotion({"_target_": pruner["_target_"]}, OmegaConf.create({"epochs": 8}), parse_space({}, ["lr0=1,2"]),
                        None)


@pytest.mark.long
def test_a_rerun_of_a_stopped_trial_continues_its_run_and_is_charged_once(tmp_path):
    """A grid of 2 lr0 with budget_runs=2 (pruner none): job 0 stops at step 30 of its 46 (as on
    a signal), so the sweep stops, charged 30/46. The same command again reruns trial 0 as trial
    1 in folder 0: the run resumes at step 30 (each step once in steps.csv, no folder 1), and the
    folder is charged once, 46/46; then trial 2 (the other lr0) fits: 2.0 spent in all."""
    from framework.search.budget import spent_runs

    sweep = tmp_path / "s"
    args = [*DIGITS, "hydra/sweeper=lr_search", "hydra/sweeper/sampler=grid", "lr0=0.1,0.3",
            "hydra/sweeper/pruner=none", "hydra.sweeper.budget_runs=2"]
    proc = multirun(sweep, *args, "trainer.stop_after_steps=30")
    assert json.loads((sweep / "0" / "summary.json").read_text())["status"] == "stopped"
    assert spent_runs(_study(sweep)) == pytest.approx(30 / 46) and not (sweep / "1").exists()
    proc = multirun(sweep, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = sorted(_study(sweep).trials, key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert trials[1].user_attrs["rerun_of"] == 0 and trials[1].params == trials[0].params
    assert trials[1].user_attrs["run_dir"] == str(sweep / "0") and not (sweep / "1").exists()
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 46 and summary["lr0"] == trials[0].params["lr0"]
    assert [int(r["step"]) for r in read_csv(sweep / "0" / "steps.csv")] == list(range(46))
    assert json.loads((sweep / "2" / "summary.json").read_text())["steps"] == 46
    assert spent_runs(_study(sweep)) == pytest.approx(2.0)  # folder 0 once (not 30/46 + 1), folder 2
