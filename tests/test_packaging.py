"""The package as ``pip install lrframe`` installs it (not editable): its wheel holds the configs and
the ``lrframe`` command, and the command runs from a folder outside the checkout, layering the
user's own config folder on the packaged one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from framework.registry import CONF_DIR
from tests.helpers import HANG_GUARD_S, ROOT, TINY


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel ``pip wheel .`` builds from the checkout (no dependencies, no network)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT),
                    "-w", str(out)], check=True, capture_output=True, timeout=HANG_GUARD_S)
    (found,) = out.glob("lrframe-*.whl")
    return found


def test_the_wheel_holds_every_config_file_and_the_command(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    packaged = {n for n in names if n.startswith("framework/conf/") and n.endswith(".yaml")}
    in_checkout = {f"framework/conf/{p.relative_to(CONF_DIR).as_posix()}" for p in CONF_DIR.rglob("*.yaml")}
    assert len(in_checkout) > 40 and packaged == in_checkout
    assert "hydra_plugins/lrframe_search/__init__.py" in names  # Hydra finds hydra/sweeper=lr_search there
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[console_scripts]" in text and "lrframe = framework.__main__:cli" in text


@pytest.mark.slow
def test_the_installed_command_runs_outside_the_checkout_with_a_user_config_dir(wheel, tmp_path):
    site = tmp_path / "site"  # the wheel unpacked as pip would install it: the checkout is not on the path
    zipfile.ZipFile(wheel).extractall(site)
    project = tmp_path / "project"  # the user's folder: their own scheduler option
    (project / "conf" / "scheduler").mkdir(parents=True)
    (project / "conf" / "scheduler" / "halving.yaml").write_text(
        "# halve the LR every epoch\n_target_: framework.schedules.Step\n_partial_: true\ninterval: epoch\n"
        "step_size: 1\ngamma: 0.5\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import framework; print(framework.__file__)"], cwd=project, env=env,
                           capture_output=True, text=True, check=True, timeout=HANG_GUARD_S).stdout
    assert Path(where.strip()).is_relative_to(site)
    proc = subprocess.run([sys.executable, "-m", "framework", "--config-dir", "conf", *TINY, "scheduler=halving",
                           "epochs=3", "dataset.train_size=64", "batch_size=32"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert proc.returncode == 0, proc.stderr
    (run,) = (project / "outputs" / "runs").glob("*/*")  # outputs/ in the current folder
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 6  # 64 / 32 = 2 steps per epoch
    lrs = [float(line.split(",")[2]) for line in (run / "steps.csv").read_text().splitlines()[1:]]
    assert lrs == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025], rel=1e-12)  # lr0 0.01 halved per epoch
