"""LR range test: probe LRs, suggestions on hand-worked curves, no side effects, lr0=auto."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from framework.lr_finder import LRFinder, probe_lrs, smooth, suggest_minimum, suggest_steepest, suggest_valley
from tests.helpers import TINY, compose_cfg, read_csv, train_in_process

DECADES = [10.0**e for e in range(-5, 3)]  # 1e-5 ... 1e2: log10 spacing 1


def test_probe_lrs_follow_the_formula_with_asymmetric_bounds():
    lrs = probe_lrs(1e-6, 3.0, 50)
    assert lrs[0] == 1e-6 and lrs[-1] == 3.0 and len(lrs) == 50
    for i in (1, 17, 48):
        assert lrs[i] == pytest.approx(1e-6 * (3.0 / 1e-6) ** (i / 49), rel=1e-12)
    ratios = [b / a for a, b in zip(lrs, lrs[1:])]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-9)


def test_smooth_is_the_bias_corrected_ema():
    # beta 0.5: a = 1, 1.5, 2.25 (x = 2, 2, 3 scaled by 1/2); corrections 1/(1-0.5^n)
    assert smooth([2.0, 2.0, 3.0], beta=0.5) == pytest.approx([2.0, 1.5 / 0.75, 2.25 / 0.875])


def test_valley_hand_worked():
    """Longest falling run 5 -> 4 -> 3 -> 2 -> 1 -> 0.5 ends at index 7 (length 6), so it starts
    at 1; a third of its length is 2, and the valley is index 1 + 2 + 1 = 4."""
    losses = [5, 5, 5, 4, 3, 2, 1, 0.5, 2, 8]
    lrs = [10.0**e for e in range(-7, 3)]
    assert suggest_valley(lrs, losses) == lrs[4]


def test_steepest_hand_worked():
    """Central differences over log10(lr) (spacing 1): slopes at 2, 3, 4 are -0.5, -0.95, -0.55."""
    losses = [3, 3, 2.9, 2, 1, 0.9, 0.9, 3]
    assert suggest_steepest(DECADES, losses) == DECADES[3]


def test_minimum_hand_worked():
    losses = [3, 3, 2.9, 2, 1, 0.9, 0.9, 3]  # first lowest at index 5 (1e0), so 1e0 / 10
    assert suggest_minimum(DECADES, losses) == pytest.approx(0.1)


def test_nan_and_inf_points_are_ignored():
    """The finite points are the steepest example shifted one decade down (1e-6 ... 1e1)."""
    lrs = [1e-6, 1e-5, 2e-5, 1e-4, 1e-3, 5e-3, 1e-2, 1e-1, 1.0, 10.0]
    losses = [3, 3, math.nan, 2.9, 2, math.inf, 1, 0.9, 0.9, 3]
    assert suggest_steepest(lrs, losses) == 1e-3
    assert suggest_minimum(lrs, losses) == pytest.approx(0.01)  # lowest (0.9) first at 1e-1
    # falling run 3 -> 2.9 -> 2 -> 1 -> 0.9 ends at finite index 5 (length 5): start 0, third 1 -> index 1
    assert suggest_valley(lrs, losses) == 1e-5


def test_too_few_points_give_no_suggestion():
    lrs, losses = [1e-3, 1e-2, 1e-1, 1.0, 10.0], [2.0, 1.5, math.nan, 1.0, math.inf]
    for fn in (suggest_steepest, suggest_valley, suggest_minimum):
        assert fn(lrs, losses) is None
    assert suggest_steepest(DECADES, [1, 1, 1, 1, 1, 1, 1, 1]) is None  # nothing falls


def test_bad_finder_arguments():
    for kwargs, text in [({"start_lr": 1.0, "end_lr": 0.1}, "need 0 < start_lr < end_lr"),
                         ({"num_steps": 2}, "lr_finder.num_steps=2"),
                         ({"suggestion": "best"}, "lr_finder.suggestion=best: use one of valley, steepest, minimum"),
                         ({"beta": "abc"}, "lr_finder.beta=abc: must be a finite number"),
                         ({"end_lr": float("inf")}, "lr_finder.end_lr=inf: must be a finite number"),
                         ({"num_steps": 5.5}, "lr_finder.num_steps=5.5: must be a finite integer")]:
        with pytest.raises(ValueError, match=text):
            LRFinder(**kwargs)


def test_range_test_leaves_weights_optimizer_data_order_and_rng_untouched(tmp_path):
    from tests.helpers import build_run

    trainer = build_run(tmp_path, *TINY, "device=cpu", "trainer.save_checkpoints=false").trainer
    x, y = next(iter(trainer.train_loader))  # give the optimizer a momentum buffer first
    torch.nn.functional.cross_entropy(trainer.model(x), y).backward()
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()
    model = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    opt = trainer.optimizer.state_dict()
    buffers = {k: v["momentum_buffer"].clone() for k, v in opt["state"].items()}
    groups = [{k: v for k, v in g.items() if k != "params"} for g in trainer.optimizer.param_groups]
    rng = torch.get_rng_state()
    order = list(trainer.train_loader.sampler)
    result = LRFinder(num_steps=30).run(trainer, lr0=0.01)
    assert len(result.lrs) >= 5
    after = trainer.model.state_dict()
    assert all(torch.equal(model[k], after[k]) for k in model)
    state = trainer.optimizer.state_dict()["state"]
    assert all(torch.equal(buffers[k], state[k]["momentum_buffer"]) for k in buffers)
    assert [{k: v for k, v in g.items() if k != "params"} for g in trainer.optimizer.param_groups] == groups
    assert torch.equal(torch.get_rng_state(), rng) and list(trainer.train_loader.sampler) == order


def test_accumulation_counts_one_probe_per_optimizer_step(tmp_path):
    from tests.helpers import build_run

    trainer = build_run(tmp_path, *TINY, "device=cpu", "trainer.accumulate_grad_batches=4", "batch_size=16").trainer
    calls = {"forward": 0, "step": 0}
    forward, apply_step = trainer.forward, trainer.optimizer_step

    def counted_forward(x):
        calls["forward"] += 1
        return forward(x)

    def counted_step():
        calls["step"] += 1
        return apply_step()

    trainer.forward, trainer.optimizer_step = counted_forward, counted_step
    result = LRFinder(start_lr=1e-5, end_lr=1e-3, num_steps=6).run(trainer, lr0=0.01)
    assert result.lrs == pytest.approx([1e-5 * 100 ** (i / 5) for i in range(6)], rel=1e-12)
    assert calls == {"forward": 24, "step": 6}  # 6 probes x 4 batches of 16, one optimizer step each


def test_lr_find_mode_writes_its_files_and_answer(tmp_path, capfd):
    from tests.helpers import run_cli_in_process

    code = run_cli_in_process([*TINY, "mode=lr_find", "lr_finder.num_steps=20"], tmp_path / "run")
    out, err = capfd.readouterr()
    assert code == 0, err[-2000:]
    line = next(ln for ln in out.splitlines() if ln.startswith("lr_find: use lr0="))
    data = json.loads((tmp_path / "run" / "lr_find.json").read_text())
    assert line.startswith(f"lr_find: use lr0={data['lr0']!r} (steepest")
    assert set(data["suggestions"]) == {"valley", "steepest", "minimum"} and data["chosen"] == "steepest"
    rows = read_csv(tmp_path / "run" / "lr_find.csv")
    assert len(rows) >= 5
    # steepest, worked out from the CSV by its documented rule: past the first tenth, up to the
    # lowest smoothed loss, the probe where d(smoothed)/d(log10 lr) is most negative
    lrs, smoothed = [float(r["lr"]) for r in rows], [float(r["smoothed_loss"]) for r in rows]
    lo = len(rows) // 10
    hi = min(range(lo, len(rows)), key=smoothed.__getitem__)
    slope = np.gradient(np.array(smoothed[lo:hi + 1]), np.log10(lrs[lo:hi + 1]))
    assert data["lr0"] == lrs[lo + int(np.argmin(slope))]
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-7 * 1e8 ** (i / 19) for i in range(len(rows))], rel=1e-12)
    assert (tmp_path / "run" / "lr_find.png").stat().st_size > 10_000
    assert not (tmp_path / "run" / "steps.csv").exists()  # nothing trained


def test_lr0_auto_equals_a_run_with_the_suggestion(tmp_path, capfd):
    from tests.helpers import run_cli_in_process

    args = [*TINY, "device=cpu", "epochs=2", "warmup_epochs=0", "lr_finder.num_steps=20", "lr_finder.suggestion=minimum"]
    code = run_cli_in_process([*args, "lr0=auto"], tmp_path / "auto")
    assert code == 0, capfd.readouterr().err[-2000:]
    summary = json.loads((tmp_path / "auto" / "summary.json").read_text())
    chosen = summary["lr0_auto"]["lr0"]
    assert summary["lr0"] == chosen and summary["lr0_auto"]["chosen"] == "minimum"
    assert chosen == json.loads((tmp_path / "auto" / "lr_find.json").read_text())["suggestions"]["minimum"]
    assert "lr0: auto" in (tmp_path / "auto" / ".hydra" / "config.yaml").read_text()  # the command as given
    auto = read_csv(tmp_path / "auto" / "steps.csv")
    assert float(auto[0]["lr"]) == chosen  # the first step uses exactly the suggestion
    train_in_process(tmp_path / "fixed", *args, f"lr0={chosen!r}")
    assert read_csv(tmp_path / "fixed" / "steps.csv") == auto


def test_suggestions_ignore_the_first_tenth_and_the_recovering_tail():
    """A curve that falls (probes 10-19), blows up (20-24), then falls back towards chance
    (25-39, as a broken model's loss does): every suggestion lies in the real fall, none on a
    boundary; a noisy low first probe is not 'the minimum'."""
    from framework.lr_finder import search_window, suggest_all

    lrs = probe_lrs(1e-6, 10.0, 40)
    fall = [2.3, 2.2, 2.1, 2.0, 1.6, 0.8, 0.7, 0.6, 0.55, 0.5]  # probes 10-19
    losses = [1.0] + [2.3] * 9 + fall + [0.5 + 3 * i for i in range(5)] + [14.0 - 0.8 * i for i in range(15)]
    assert search_window(losses) == (4, 19)  # 40 // 10 = 4; lowest after it: 0.5 at 19
    out = suggest_all(lrs, losses)
    # central differences (equal log spacing): probe 13: 1.6-2.1 = -0.5, 14: 0.8-2.0 = -1.2, 15: 0.7-1.6 = -0.9
    assert out["steepest"] == lrs[14]
    assert out["minimum"] == pytest.approx(lrs[19] / 10)
    assert lrs[4] <= out["valley"] <= lrs[19]
    # over the whole curve the recovering tail (-0.8 per probe, -1.6 over two) would look steepest
    assert suggest_steepest(lrs, losses) > lrs[25]


def test_a_suggestion_on_the_range_boundary_is_dropped():
    from framework.lr_finder import suggest_all

    lrs = probe_lrs(1e-3, 1.0, 20)
    falling = [2.0 - 0.004 * i * i for i in range(20)]  # falling ever faster up to end_lr
    out = suggest_all(lrs, falling)
    assert suggest_steepest(lrs, falling) == lrs[-1]  # the steepest fall is the last probe: beyond the range
    assert out["steepest"] is None and out["minimum"] == pytest.approx(lrs[-1] / 10)
    rising = [1.0 + 0.1 * i for i in range(20)]  # only rises: nothing to suggest
    assert suggest_all(lrs, rising) == {"valley": None, "steepest": None, "minimum": None}


def test_an_optimizer_that_ignores_lr0_is_refused(tmp_path):
    from framework.errors import ConfigError
    from framework.run import train

    cfg = compose_cfg(*TINY, "device=cpu", "mode=lr_find", "optimizer.lr=0.5")
    with pytest.raises(ConfigError, match=r"mode=lr_find: optimizer.lr is not \$\{lr0\} here"):
        train(cfg, run_dir=tmp_path)
    assert not (tmp_path / "lr_find.csv").exists()


def test_a_curve_without_a_usable_fall_gives_no_suggestion():
    """Window = probes 2-19 of 20 (20 // 10 = 2). A fall of 0.8% from probe 2 to the lowest
    point is noise (MIN_FALL = 1%): nothing is suggested; a fall of 1.2% is a fall."""
    from framework.lr_finder import MIN_FALL, suggest_all

    assert MIN_FALL == 0.01
    lrs = probe_lrs(1e-7, 1e-5, 20)
    for fall, usable in ((0.008, False), (0.012, True)):
        losses = [2.3] * 3 + [2.3 * (1 - fall * i / 16) for i in range(1, 17)] + [2.3]  # lowest 2.3*(1-fall) at 18
        out = suggest_all(lrs, losses)
        assert (out["steepest"] is not None) == usable, (fall, out)
        assert (out["minimum"] == pytest.approx(lrs[18] / 10)) if usable else out["minimum"] is None


def test_lr0_auto_without_a_usable_fall_stops_before_training(tmp_path, capfd):
    """LRs of 1e-7 .. 1e-6 barely move a fresh network: lr0=auto refuses in one line (exit 2)
    naming what to change, instead of training at a meaningless lr0."""
    from tests.helpers import lines as stderr_lines, run_cli_in_process

    args = [*TINY, "device=cpu", "epochs=2", "lr0=auto", "lr_finder.start_lr=1e-7", "lr_finder.end_lr=1e-6",
            "lr_finder.num_steps=20"]
    assert run_cli_in_process(args, tmp_path / "run") == 2
    lines = stderr_lines(capfd.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("error: lr0=auto: no steepest suggestion (20 probes; no usable "
                                                   "fall of the loss); widen lr_finder.start_lr/end_lr"), lines
    assert "dataset.train_size" in lines[0] and not (tmp_path / "run" / "steps.csv").exists()
