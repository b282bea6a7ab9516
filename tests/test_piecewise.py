"""``scheduler=piecewise``: a recorded LR trace replayed exactly (every step, every param group),
breakpoints worked out by hand, one-line refusals, and the exporter (last row of a step wins, gaps
refused)."""
from __future__ import annotations

import json

import pytest

from framework.config import validate
from framework.errors import ConfigError
from framework.schedules.piecewise import Piecewise, export_schedule, load_trace, read_steps
from framework.schedules.piecewise.__main__ import main as export_main
from framework.schedules.plan import build_plan
from tests.helpers import (TINY, build_run, compose_cfg, lines, read_csv, run_cli_in_process, train_in_process)

#: 4 optimizer steps per epoch (+debug=tiny: 256 samples, batch 64), two LR ratios (head x10).
GROUPS = ["optimizer.head_lr_mult=10", "trainer.save_checkpoints=false"]


def write(path, text: str):
    path.write_text(text)
    return path


def lr_columns(rows: list[dict[str, str]]) -> list[str]:
    return [c for c in rows[0] if c == "lr" or c.startswith("lr/")]


# ---- (a) record, export, replay from scratch ----

def test_a_recorded_warmup_cosine_run_is_replayed_exactly_in_every_group(tmp_path, capfd, monkeypatch):
    """Warmup 3 steps + cosine, lr0 0.05, head x10, 3 epochs (T = 12); exported by the CLI, replayed
    by train.py with another lr0 (divided out) and a path relative to the current folder."""
    train_in_process(tmp_path / "rec", *TINY, *GROUPS, "epochs=3", "scheduler=cosine", "warmup_steps=3", "lr0=0.05")
    recorded = read_csv(tmp_path / "rec" / "steps.csv")
    monkeypatch.chdir(tmp_path)
    export_main(["rec", "-o", "best_schedule.yaml"])
    printed = capfd.readouterr().out
    assert "wrote best_schedule.yaml: the LR of 12 optimizer steps of rec" in printed
    assert "replay: python train.py scheduler=piecewise scheduler.path=best_schedule.yaml warmup_epochs=0" in printed
    text = (tmp_path / "best_schedule.yaml").read_text()
    assert text.startswith("# LR schedule for scheduler=piecewise") and "lr/head = 10 x lr" in text
    # the file reads back bit for bit what steps.csv holds
    assert load_trace(tmp_path / "best_schedule.yaml").lrs == tuple(float(r["lr"]) for r in recorded)
    # warmup (hand-worked): lr0 * (0.1 + 0.9 k/3) at k = 0, 1, 2, then lr0 at k = 3
    assert [float(r["lr"]) for r in recorded[:4]] == pytest.approx([0.005, 0.02, 0.035, 0.05], rel=1e-12)

    code = run_cli_in_process([*TINY, *GROUPS, "epochs=3", "scheduler=piecewise", "scheduler.path=best_schedule.yaml",
                               "lr0=0.3"], tmp_path / "replay", cwd=tmp_path)
    assert code == 0, capfd.readouterr().err[-2000:]
    replayed = read_csv(tmp_path / "replay" / "steps.csv")
    columns = lr_columns(recorded)
    assert columns == ["lr", "lr/no_decay", "lr/head", "lr/head_no_decay"] and lr_columns(replayed) == columns
    assert [int(r["step"]) for r in replayed] == list(range(12))
    for old, new in zip(recorded, replayed, strict=True):
        for column in columns:
            assert float(new[column]) == pytest.approx(float(old[column]), rel=1e-12, abs=0), (old["step"], column)


# ---- (b) breakpoints, by hand ----

BREAKPOINTS = "breakpoints: [[0, 0.1], [4, 0.05], [10, 0.001]]\n"
#: Linear between (0, 0.1), (4, 0.05), (10, 0.001), then 0.001: k=1: 0.1 - 0.05/4; k=7: 0.05 - 0.049*3/6.
BY_HAND = {0: 0.1, 1: 0.0875, 2: 0.075, 3: 0.0625, 4: 0.05, 5: 0.05 - 0.049 / 6, 7: 0.0255, 9: 0.05 - 0.049 * 5 / 6,
           10: 0.001, 11: 0.001, 15: 0.001}


def test_breakpoints_interpolate_linearly_and_hold_the_last_lr_in_every_group(tmp_path):
    """4 epochs of 4 steps: T = 16; lr0 0.3 is divided out; the head groups get 10x."""
    path = write(tmp_path / "bp.yaml", BREAKPOINTS)
    built = build_run(tmp_path / "run", *TINY, *GROUPS, "epochs=4", "lr0=0.3", "scheduler=piecewise",
                      f"scheduler.path={path}")
    lrs = built.plan.group_lrs(built.trainer.optimizer)
    assert set(lrs) == {"decay", "no_decay", "head", "head_no_decay"} and len(lrs["decay"]) == 16
    for k, value in BY_HAND.items():
        for name, ratio in (("decay", 1), ("no_decay", 1), ("head", 10), ("head_no_decay", 10)):
            assert lrs[name][k] == pytest.approx(ratio * value, rel=1e-12, abs=0), (k, name)


#: 2 epochs of 4 steps (T = 8): the LR held, the momentum per step, the weight decay from steps 0, 3, 6.
MOMENTA = [0.9, 0.9, 0.85, 0.85, 0.8, 0.8, 0.95, 0.95]
WITH_MOMENTUM = ("lr: [" + ", ".join(["0.05"] * 8) + "]\nmomentum: [" + ", ".join(map(str, MOMENTA)) + "]\n"
                 "weight_decay: [[0, 0.0005], [3, 0.002], [6, 0.0]]\n")
#: The weight decay of the groups that decay at each step k = 0..7, by hand from the pairs.
DECAY_BY_HAND = [0.0005] * 3 + [0.002] * 3 + [0.0] * 2


def test_the_files_momentum_and_weight_decay_apply_step_by_step(tmp_path):
    """The plan sets every group's momentum to momentum[k] and the decaying groups' weight decay
    to the pair in force at k (the no-decay groups keep 0); a run logs both in steps.csv."""
    path = write(tmp_path / "m.yaml", WITH_MOMENTUM)
    built = build_run(tmp_path / "run", *TINY, *GROUPS, "epochs=2", "scheduler=piecewise", f"scheduler.path={path}")
    optimizer = built.trainer.optimizer
    assert built.plan.sets_momentum and built.plan.sets_weight_decay
    for k in range(8):
        built.plan.apply(optimizer, k)
        for group in optimizer.param_groups:
            assert group["momentum"] == MOMENTA[k], (k, group["name"])
            decays = group["name"] in ("decay", "head")
            assert group["weight_decay"] == (DECAY_BY_HAND[k] if decays else 0.0), (k, group["name"])
    train_in_process(tmp_path / "replay", *TINY, *GROUPS, "epochs=2", "scheduler=piecewise", f"scheduler.path={path}")
    rows = read_csv(tmp_path / "replay" / "steps.csv")
    assert [float(r["momentum"]) for r in rows] == MOMENTA
    assert [float(r["weight_decay"]) for r in rows] == DECAY_BY_HAND
    assert [float(r["lr"]) for r in rows] == [0.05] * 8
    # stopped after 5 steps (in the 0.002 stretch) and resumed: the same momentum and weight decay
    part = tmp_path / "part"
    args = [*TINY, *GROUPS, "epochs=2", "scheduler=piecewise", f"scheduler.path={path}", "trainer.save_checkpoints=true"]
    assert run_cli_in_process([*args, "trainer.stop_after_steps=5"], part) == 0
    assert run_cli_in_process([*args, f"resume={part}"], None, cwd=tmp_path) == 0
    again = read_csv(part / "steps.csv")
    assert [int(r["step"]) for r in again] == list(range(8))
    assert [float(r["momentum"]) for r in again] == MOMENTA
    assert [float(r["weight_decay"]) for r in again] == DECAY_BY_HAND


def test_a_weight_decay_trace_without_a_decaying_group_is_one_line(tmp_path):
    path = write(tmp_path / "m.yaml", WITH_MOMENTUM)
    with pytest.raises(ConfigError) as info:
        build_run(tmp_path / "run", *TINY, "epochs=2", "scheduler=piecewise", f"scheduler.path={path}",
                  "optimizer.weight_decay=0")
    assert info.value.messages == [
        f"scheduler.path={path}: holds a weight_decay trace, but no param group of SGD decays "
        "(optimizer.weight_decay=0); set optimizer.weight_decay to the recorded run's (> 0), or remove weight_decay:"]


def test_a_momentum_trace_shorter_than_the_run_is_refused(tmp_path):
    path = write(tmp_path / "m.yaml", "lr: [" + ", ".join(["0.05"] * 8) + "]\nmomentum: [0.9, 0.8]\n")
    with pytest.raises(ConfigError, match="holds the momentum of 2 optimizer steps, but this run has 8"):
        build_plan(validate(compose_cfg(*TINY, "epochs=2", "scheduler=piecewise", f"scheduler.path={path}")), 4)


def test_the_exporter_writes_a_changed_momentum_and_the_lineages_weight_decay(tmp_path):
    """steps.csv's momentum varies: written per step; summary.json's PBT lineage has weight decay
    5e-4 from step 0, 5e-4 from step 2 (the same: no new pair) and 1e-3 from step 3."""
    write(tmp_path / "steps.csv", "step,epoch,lr,momentum,loss\n0,0,0.1,0.9,2\n1,0,0.1,0.9,2\n2,0,0.08,0.72,2\n"
                                  "3,1,0.08,0.864,2\n4,1,0.07,0.864,2\n")
    lineage = [{"trial": 0, "from_step": 0, "to_step": 2, "params": {"lr0": 0.1, "optimizer.weight_decay": 5e-4}},
               {"trial": 1, "from_step": 2, "to_step": 3, "params": {"lr0": 0.08, "optimizer.weight_decay": 5e-4}},
               {"trial": 0, "from_step": 3, "to_step": None, "params": {"lr0": 0.08, "optimizer.weight_decay": 1e-3}}]
    write(tmp_path / "summary.json", json.dumps({"status": "completed", "tune": {"lineage": lineage}}))
    trace = load_trace(export_schedule(tmp_path, tmp_path / "s.yaml"))
    assert trace.momenta == (0.9, 0.9, 0.72, 0.864, 0.864)
    assert trace.weight_decays == ((0, 5e-4), (3, 1e-3))
    assert [trace.weight_decay(k) for k in range(5)] == [5e-4, 5e-4, 5e-4, 1e-3, 1e-3]
    # a momentum that never changed and no lineage: neither is written (the optimizer's own applies)
    write(tmp_path / "steps.csv", "step,epoch,lr,momentum,loss\n0,0,0.1,0.9,2\n1,0,0.1,0.9,2\n")
    (tmp_path / "summary.json").unlink()
    text = export_schedule(tmp_path, tmp_path / "s2.yaml").read_text()
    assert "\nmomentum:" not in text and "\nweight_decay:" not in text


def test_a_json_list_longer_than_the_run_replays_its_first_steps(tmp_path, caplog):
    path = write(tmp_path / "trace.json", json.dumps({"lr": [0.1 / (k + 1) for k in range(10)]}))
    plan = build_plan(validate(compose_cfg(*TINY, "epochs=2", "scheduler=piecewise", f"scheduler.path={path}")), 4)
    assert [0.01 * m for m in plan.multipliers()] == pytest.approx([0.1 / (k + 1) for k in range(8)], rel=1e-12)
    assert "holds 10 steps; this run of 8 replays the first 8" in caplog.text


def test_plot_lr_draws_the_replayed_plan(tmp_path, capfd):
    path = write(tmp_path / "bp.yaml", BREAKPOINTS)
    code = run_cli_in_process([*TINY, "mode=plot_lr", "epochs=4", "scheduler=piecewise", f"scheduler.path={path}"],
                              tmp_path / "run")
    assert code == 0, capfd.readouterr().err[-2000:]
    points = json.loads((tmp_path / "run" / "lr_plan.json").read_text())
    assert (points["steps"], points["first_lr"], points["peak_lr"], points["final_lr"]) == (16, 0.1, 0.1, 0.001)
    assert (tmp_path / "run" / "lr_plan.png").read_bytes()[:4] == b"\x89PNG"


# ---- (c) one line per mistake, naming the key ----

FILE_ERRORS = [
    ("lr: [0.1, 0.2\n", "YAML syntax error at line 2"),
    ("lr: [0.1, -0.01]\n", "lr[1] = -0.01: an LR must be finite and >= 0"),
    ("lr: [0.1, .nan]\n", "lr[1] = nan: an LR must be finite and >= 0"),
    ("lr: [0.1, .inf]\n", "lr[1] = inf: an LR must be finite and >= 0"),
    ("lr: [0.1, abc]\n", "lr[1] = 'abc' is not a number"),
    ("lr: []\n", "lr must be a non-empty list"),
    ("lrs: [0.1]\n", "unknown key lrs (did you mean lr?)"),
    ("lr: [0.1]\nbreakpoints: [[0, 0.1]]\n", "holds both lr and breakpoints"),
    ("[0.1, 0.2]\n", "holds a list"),
    ("", "holds nothing"),
    ("breakpoints: [[0, 0.1], [5, 0.05], [5, 0.01]]\n", "breakpoints[2] is at step 5 after step 5"),
    ("breakpoints: [[0, 0.1], [5, 0.05], [3, 0.01]]\n", "breakpoints[2] is at step 3 after step 5"),
    ("breakpoints: [[2, 0.1], [5, 0.01]]\n", "the first breakpoint is at step 2; it must be at step 0"),
    ("breakpoints: [[0, 0.1, 3]]\n", "breakpoints[0] = [0, 0.1, 3]: each breakpoint is [step, lr]"),
    ("breakpoints: [[0.5, 0.1]]\n", "breakpoints[0] = [0.5, 0.1]: each breakpoint is [step, lr]"),
    ("breakpoints: [[0, -1]]\n", "breakpoints[0] LR = -1: an LR must be finite and >= 0"),
    ("lr: [0.1]\nmomentum: [1.2]\n", "momentum[0] = 1.2: a momentum must be in [0, 1); fix that value"),
    ("lr: [0.1]\nmomentum: [abc]\n", "momentum[0] = 'abc' is not a number; a momentum is a number in [0, 1), e.g. 0.9"),
    ("lr: [[0, 0.1], [8, 0.01]]\n", "lr[0] = [0, 0.1] is not a number; an LR is a number >= 0, e.g. 0.01; [step, lr] "
                                     "pairs go under breakpoints:"),
    ("lr: [0.1]\nmomentum: 0.9\n", "momentum must be a non-empty list (the momentum of every optimizer step)"),
    ("lr: [0.1]\nweight_decay: [[2, 0.1]]\n", "the first weight_decay pair is at step 2; it must be at step 0"),
    ("lr: [0.1]\nweight_decay: [[0, -1]]\n", "weight_decay[0] value = -1: a weight decay must be finite and >= 0"),
    ("lr: [0.1]\nweight_decay: [[0, 0.1], [0, 0.2]]\n", "weight_decay pair steps must be strictly increasing"),
    ("lr: [0.1]\nmomentun: [0.9]\n", "unknown key momentun (did you mean momentum?)"),
]


@pytest.mark.parametrize("text,message", FILE_ERRORS, ids=[m for _, m in FILE_ERRORS])
def test_a_bad_file_is_one_line_naming_scheduler_path(tmp_path, text, message):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg(*TINY, "scheduler=piecewise", f"scheduler.path={path}"))
    assert info.value.messages == [info.value.messages[0]] and info.value.messages[0].startswith(
        f"scheduler.path={path}: ") and message in info.value.messages[0]


def test_bad_json_names_its_line(tmp_path):
    path = write(tmp_path / "bad.json", '{"lr": [0.1,\n 0.2,]}')
    with pytest.raises(ConfigError, match=r"scheduler.path=.*bad.json: JSON syntax error at line 2"):
        load_trace(path)


CONFIG_ERRORS = [
    ([], "scheduler.path: has no value (???); set it, e.g. scheduler.path=best_schedule.yaml"),
    (["scheduler.interval=epoch"], "scheduler.interval=epoch: scheduler=piecewise holds one LR per optimizer step"),
    (["lr_scaling=linear"], "lr_scaling=linear: scheduler=piecewise applies the file's LRs as they are"),
    (["optimizer.layer_decay=0.7"], "optimizer.layer_decay=0.7: scheduler=piecewise replays the first param group"),
    (["lr0=auto"], "lr0=auto: scheduler=piecewise applies the file's LRs as they are"),
    (["+scheduler.gamma=0.5"], "scheduler.gamma: not an argument of framework.schedules.Piecewise"),
]


@pytest.mark.parametrize("args,message", CONFIG_ERRORS, ids=[m.split(":")[0] for _, m in CONFIG_ERRORS])
def test_config_a_replay_cannot_honour_is_refused_by_validate(tmp_path, args, message):
    path = write(tmp_path / "bp.yaml", BREAKPOINTS)
    given = [] if not args else [f"scheduler.path={path}"]
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg(*TINY, "scheduler=piecewise", *given, *args))
    assert len(info.value.messages) == 1 and message in info.value.messages[0], info.value.messages


@pytest.mark.parametrize("text,args,message", [
    (None, ["scheduler.path=no/such/schedule.yaml"], "scheduler.path=no/such/schedule.yaml: no such file"),
    ("lr: [0.1, -0.01]\n", [], "lr[1] = -0.01: an LR must be finite and >= 0"),
    ("breakpoints: [[0, 0.1], [5, 0.05], [5, 0.01]]\n", [], "breakpoint steps must be strictly increasing"),
    ("lr: [0.1, 0.1, 0.1, 0.1, 0.1]\n", ["epochs=2"], "holds the LR of 5 optimizer steps, but this run has 8; shorten "
                                                      "the run (max_steps=5, or fewer epochs) or give a longer trace"),
    (BREAKPOINTS, ["warmup_steps=2"], "warmup_epochs / warmup_steps: the run asks for 2 warmup steps"),
    (BREAKPOINTS, ["warmup_epochs=1"], "set warmup_epochs=0 warmup_steps=null"),
], ids=["missing", "negative", "not-increasing", "run-longer-than-list", "warmup_steps", "warmup_epochs"])
def test_train_py_refuses_in_one_line_exit_2_before_training(tmp_path, capfd, text, args, message):
    given = [f"scheduler.path={write(tmp_path / 'trace.yaml', text)}"] if text is not None else []
    run_dir = tmp_path / "run"
    code = run_cli_in_process([*TINY, "scheduler=piecewise", *given, *args], run_dir)
    out, err = capfd.readouterr()
    assert code == 2, err
    assert len(lines(err)) == 1 and lines(err)[0].startswith("error: ") and message in lines(err)[0], err
    assert "Traceback" not in out + err and not run_dir.exists()


def test_a_run_folder_as_path_says_to_export_it_first(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(ConfigError, match="it is a folder; export its schedule first: python -m "
                                          "framework.schedules.piecewise"):
        load_trace(tmp_path / "run")


def test_the_schedule_refuses_a_zero_horizon_and_has_no_lrf(tmp_path):
    path = write(tmp_path / "bp.yaml", BREAKPOINTS)
    with pytest.raises(ConfigError):
        Piecewise(0, str(path), base_lr=0.1)
    assert [Piecewise(3, str(path), base_lr=0.1)(t) for t in range(3)] == pytest.approx([1.0, 0.875, 0.75], rel=1e-12)
    assert not Piecewise.ends_at_lrf and not Piecewise.counts_warmup


# ---- (d) the exporter: rows by step, last row wins, gaps refused ----

HEADER = "step,epoch,lr,lr/head,loss\n"


def test_a_step_logged_again_after_a_resume_keeps_its_last_row(tmp_path):
    """Steps 2 and 3 ran again after a crash (second rows last): their later LRs win."""
    write(tmp_path / "steps.csv", HEADER + "0,0,0.1,1.0,2.3\n1,0,0.09,0.9,2.2\n2,0,0.08,0.8,2.1\n3,0,0.07,0.7,2.0\n"
                                           "2,0,0.081,0.81,2.1\n3,0,0.071,0.71,2.0\n4,1,0.06,0.6,1.9\n")
    lr, groups, replaced = read_steps(tmp_path)
    assert lr == [0.1, 0.09, 0.081, 0.071, 0.06] and groups == {"lr/head": [1.0, 0.9, 0.81, 0.71, 0.6]}
    assert replaced == 2
    out = export_schedule(tmp_path, tmp_path / "out" / "schedule.yaml")
    assert load_trace(out).lrs == (0.1, 0.09, 0.081, 0.071, 0.06)
    text = out.read_text()
    assert "2 rows of steps run again after a resume replaced by their last row" in text
    assert "lr/head = 10 x lr" in text and all(line.startswith("#") for line in text.split("\nlr:\n")[0].splitlines())


@pytest.mark.parametrize("rows,message", [
    ("0,0,0.1,1,2\n1,0,0.1,1,2\n3,0,0.1,1,2\n", "steps 0..3 are not all there (missing 2)"),
    ("2,0,0.1,1,2\n3,0,0.1,1,2\n", "steps 0..3 are not all there (missing 0, 1)"),
    ("", "holds no steps"),
    ("0,0,0.1,1,2\n1,0,abc,1,2\n", "line 3: step, lr, lr/head must be numbers"),
    ("0,0,0.1,1,2\n1,0,-0.1,1,2\n", "line 3: step 1 has lr '-0.1'; a step needs a finite lr >= 0"),
    ("0,0,0.1,1,2\n1,0,0.0\n", "line 3: does not hold one value per column"),
])
def test_gaps_and_bad_rows_are_refused(tmp_path, rows, message):
    write(tmp_path / "steps.csv", HEADER + rows)
    with pytest.raises(ConfigError, match="steps.csv") as info:
        export_schedule(tmp_path, tmp_path / "schedule.yaml")
    assert message in str(info.value) and not (tmp_path / "schedule.yaml").exists()


def test_floats_read_back_bit_identical(tmp_path):
    """repr() of these has no dot (1e-05) or is not the shortest decimal one would type."""
    values = [1e-05, 5e-324, 0.1 + 0.2, 1e16, 2.5e-07, 0.0, 1.0, 0.006999999999999999]
    write(tmp_path / "steps.csv", "step,lr\n" + "".join(f"{k},{v!r}\n" for k, v in enumerate(values)))
    out = export_schedule(tmp_path, tmp_path / "s.yaml")
    assert list(load_trace(out).lrs) == values and "- 1.0e-05\n" in out.read_text()
    import yaml

    assert yaml.safe_load(out.read_text())["lr"] == values  # a plain YAML 1.1 reader too


def test_the_cli_refuses_in_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        export_main([str(tmp_path)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and lines(err) == [f"error: {tmp_path}: no steps.csv there; give a run folder "
                                                   "(outputs/runs/<date>/<time>)"]
    with pytest.raises(ConfigError, match="-o x.json: the exporter writes YAML"):
        export_schedule(tmp_path, "x.json")
