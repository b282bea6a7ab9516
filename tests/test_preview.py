"""Previews of the LR plan: mode=plot_lr and python -m framework.preview."""
from __future__ import annotations

import json

import pytest

from framework.preview import expand, main
from framework.registry import available
from tests.helpers import TINY, train_in_process


def test_mode_plot_lr_draws_the_plan_and_trains_nothing(tmp_path):
    """onecycle, T = 4 epochs x 4 steps = 16, pct_start 0.25: peak lr0 exactly at step 3."""
    train_in_process(tmp_path, *TINY, "mode=plot_lr", "scheduler=onecycle", "scheduler.pct_start=0.25",
                     "epochs=4", "lr0=0.1")
    names = {p.name for p in tmp_path.iterdir()}
    assert {"lr_plan.png", "lr_plan.json"} <= names and "steps.csv" not in names and "checkpoints" not in names
    points = json.loads((tmp_path / "lr_plan.json").read_text())
    assert points["steps"] == 16 and points["peak_step"] == 3 and points["peak_lr"] == 0.1
    assert points["first_lr"] == pytest.approx(0.1 / 25, abs=1e-15) and points["final_lr"] == 0.1 * 0.01
    summary = json.loads((tmp_path / "summary.json").read_text())  # a sweep of previews reports them as done
    assert (summary["status"], summary["mode"], summary["planned_steps"]) == ("completed", "plot_lr", 16)


def test_expand_sweeps_like_hydra():
    assert expand(["scheduler=cosine,wsd", "epochs=3"]) == [["scheduler=cosine", "epochs=3"],
                                                           ["scheduler=wsd", "epochs=3"]]
    assert [c[0] for c in expand(["scheduler=glob(cos*)"])] == ["scheduler=cosine", "scheduler=cosine_restarts"]
    assert len(expand(["scheduler=glob(*)", "lr0=0.1,0.01"])) == 2 * len(available("scheduler"))


def test_overlay_command_writes_one_png_and_prints_key_points(tmp_path, capsys):
    out = tmp_path / "overlay.png"
    main(["scheduler=cosine,linear", *TINY, "epochs=3", "lr0=0.1", "--out", str(out)])
    text = capsys.readouterr().out
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "scheduler=cosine: T=12, first 0.1, peak 0.1 at step 0, final 0.001" in text
    assert "scheduler=linear: T=12" in text


def test_preview_shows_the_bias_group_warmup(tmp_path):
    """+experiment=ultralytics: the planned bias LR starts at warmup_bias_lr = 0.1, as trained."""
    train_in_process(tmp_path, *TINY, "+experiment=ultralytics", "mode=plot_lr", "epochs=5")
    points = json.loads((tmp_path / "lr_plan.json").read_text())
    assert points["groups"]["bias"] == 0.1 and points["groups"]["decay"] == pytest.approx(0.001, abs=1e-15)


@pytest.mark.parametrize("override,text", [
    ("lr0=auto", "error: lr0=auto: a preview draws the plan of a number; give lr0=<value>"),
    ("optimizer.lr=0.5", "error: optimizer.lr=0.5: the optimizer's LR is lr0"),
])
def test_preview_refuses_what_training_refuses(tmp_path, capsys, override, text):
    out = tmp_path / "p.png"
    with pytest.raises(SystemExit) as info:
        main([*TINY, override, "--out", str(out)])
    assert info.value.code == 2 and capsys.readouterr().err.startswith(text) and not out.exists()
