"""The worked example of README "Use it on your own project" (examples/digit_attributes: an own
model with a strict constructor, an own dataset callable, a multi-label task config and PyTorch's
ExponentialLR), run with the installed ``lrframe`` command from a folder outside the checkout."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from omegaconf import OmegaConf

from tests.helpers import HANG_GUARD_S, ROOT, compose_cfg

EXAMPLE = ROOT / "examples" / "digit_attributes"


def lrframe_command() -> list[str]:
    """The console script ``pip install`` made (beside this Python, in its scheme's or the user's
    scripts folder, or on PATH), as a user runs it; else its entry point, ``python -m framework``."""
    import os
    import sysconfig

    folders = [str(Path(sys.executable).parent), sysconfig.get_path("scripts"),
               sysconfig.get_path("scripts", f"{os.name}_user"), os.environ.get("PATH", "")]
    command = shutil.which("lrframe", path=os.pathsep.join(f for f in folders if f))
    return [command] if command else [sys.executable, "-m", "framework"]


def lrframe(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``lrframe <args>`` in ``cwd``; it must succeed."""
    proc = subprocess.run([*lrframe_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr
    return proc


def expected_lrs(lr0: float, steps_per_epoch: int, epochs: int, gamma: float) -> list[float]:
    """One epoch of linear warmup from 0.1 x lr0 (LinearLR's closed form: lr0 (s + (1-s) k/W)),
    then PyTorch's ExponentialLR stepped by hand once per epoch on a real optimizer."""
    W, s = steps_per_epoch, 0.1
    lrs = [lr0 * (s + (1 - s) * k / W) for k in range(W)]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr0)
    exponential = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    for _ in range(epochs - 1):
        lrs += [optimizer.param_groups[0]["lr"]] * steps_per_epoch
        optimizer.step()
        exponential.step()
    return lrs


@pytest.mark.long
@pytest.mark.slow
def test_the_worked_example_trains_tests_and_predicts_outside_the_checkout(tmp_path):
    project = tmp_path / "digit_attributes"  # the user's own folder, nowhere near the checkout
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    spelled_out = ["model=smallcnn", "dataset=digit_attributes", "task=attributes", "scheduler=torch",
                   "scheduler.name=ExponentialLR", "scheduler.gamma=0.8", "scheduler.interval=epoch", "lr0=0.05",
                   "warmup_epochs=1", "batch_size=32", "trainer.accumulate_grad_batches=2", "optimizer.head_lr_mult=2.0",
                   "optimizer.head_prefix=head", "epochs=3"]
    # the README's +experiment=attributes is that command line (Hydra composes the same config)
    searchpath = f"hydra.searchpath=[file://{project / 'conf'}]"  # as --config-dir conf
    composed = [OmegaConf.to_yaml(compose_cfg(searchpath, *args))
                for args in (["+experiment=attributes", "epochs=3"], spelled_out)]
    assert composed[0] == composed[1] and "name: ExponentialLR" in composed[0]
    lrframe("--config-dir", "conf", *spelled_out, cwd=project)
    (run,) = (project / "outputs" / "runs").glob("*/*")
    with open(run / "steps.csv") as f:
        rows = list(csv.DictReader(f))
    # 1,797 digits - 359 val - 359 test = 1,079 training images; 34 batches of 32 (the last of 23),
    # 2 per optimizer step: 17 steps per epoch, 51 in 3 epochs
    expected = expected_lrs(0.05, 17, 3, 0.8)
    assert len(rows) == 51
    for row, lr in zip(rows, expected):
        assert float(row["lr"]) == pytest.approx(lr, rel=1e-12, abs=1e-15)
        assert float(row["lr/head"]) == pytest.approx(2 * lr, rel=1e-12, abs=1e-15)  # optimizer.head_lr_mult=2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["objective_name"] == "val/auroc"
    assert summary["classes"] == ["even", "large", "prime"] and summary["task"]["label_type"] == "multi_hot"
    with open(run / "epochs.csv") as f:
        last = list(csv.DictReader(f))[-1]
    assert 0.5 < float(last["val/auroc"]) <= 1 and 0 < float(last["val/map"]) <= 1

    lrframe("mode=test", f"resume={run}", cwd=project)  # the run's own config: nothing else to repeat
    result = json.loads((run / "test.json").read_text())
    assert result["split"] == "test" and result["samples"] == 359 and result["checkpoint"].endswith("best.pt")
    assert set(result["metrics"]) == {"test/loss", "test/map", "test/auroc"}

    lrframe("mode=predict", f"resume={run}", cwd=project)
    with open(run / "predictions.csv") as f:
        predictions = list(csv.DictReader(f))
    assert len(predictions) == 359 and list(predictions[0]) == ["index", "prob/even", "prob/large", "prob/prime",
                                                                "label/even", "label/large", "label/prime"]
    assert all(p["label/even"] in ("0.0", "1.0") for p in predictions)
    assert all(0 <= float(p["prob/prime"]) <= 1 for p in predictions)
