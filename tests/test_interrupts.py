"""SIGTERM / Ctrl-C outside the training loop: where a signal is raised, deferred or held."""
from __future__ import annotations

import signal
import sys

import pytest

from framework import interrupts


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    for name, value in (("_armed", False), ("_interruptible", 0), ("_training", False), ("_pending", None),
                        ("_deferred", None)):
        monkeypatch.setattr(interrupts, name, value)


def deliver(name: str) -> None:
    """What Python does when the signal arrives here: call the handler with this frame."""
    interrupts._handler(signal.Signals[name], sys._getframe())


def test_before_the_command_line_is_armed_a_signal_waits_for_the_first_check():
    deliver("SIGTERM")  # e.g. while Hydra composes: nothing is raised inside its code
    interrupts.check()  # not armed yet: still waiting
    interrupts.arm()
    with pytest.raises(interrupts.Interrupted) as info:
        interrupts.check()
    assert (info.value.signal_name, info.value.exit_code) == ("SIGTERM", 143)
    deliver("SIGINT")  # after the first: held while the program ends, never raised again
    assert interrupts.take_pending() == "SIGINT"


def test_outside_an_interruptible_step_it_waits_inside_one_it_is_raised_at_once():
    interrupts.arm()
    deliver("SIGINT")
    with pytest.raises(interrupts.Interrupted, match="SIGINT"):
        with interrupts.interruptible():  # the entry is a safe point
            pass
    interrupts._training = False
    with pytest.raises(interrupts.Interrupted) as info:
        with interrupts.interruptible():
            deliver("SIGINT")  # e.g. during a download
    assert info.value.exit_code == 130


def test_inside_an_import_it_is_never_raised(tmp_path, monkeypatch):
    """A module that receives the signal while it is being imported finishes importing."""
    interrupts.arm()
    (tmp_path / "slow_module.py").write_text("import sys\nfrom tests.test_interrupts import deliver\n"
                                             "deliver('SIGTERM')\nDONE = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(interrupts, "REDELIVER_S", 3600.0)  # the timer would send it again later
    interrupts._interruptible = 1
    import slow_module  # noqa: F401  (the handler ran inside this import)

    assert slow_module.DONE and interrupts._deferred == "SIGTERM"
    interrupts._interruptible = 0
    with pytest.raises(interrupts.Interrupted):
        interrupts.check()
    sys.modules.pop("slow_module", None)


def test_once_training_starts_signals_are_held_and_a_sweep_stops_before_its_next_job():
    interrupts.arm()
    interrupts.set_training(True)
    deliver("SIGTERM")  # e.g. while summary.json is written
    assert interrupts.take_pending() == "SIGTERM" and interrupts.take_pending() is None
    interrupts.hold("SIGINT")  # the trainer stopped a sweep job on SIGINT
    with pytest.raises(interrupts.Interrupted, match="SIGINT"):
        interrupts.set_training(False)  # the next job

