"""Checkpoints: atomic writes, safe loads."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from framework.checkpoint import load_checkpoint, save_checkpoint


def test_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(4.0)}, "step": 7}
    save_checkpoint(state, tmp_path / "c" / "last.pt")
    got = load_checkpoint(tmp_path / "c" / "last.pt")
    assert got["step"] == 7 and torch.equal(got["model"]["w"], torch.arange(4.0))
    assert os.listdir(tmp_path / "c") == ["last.pt"]


def test_failed_write_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)
    with pytest.raises(Exception):
        save_checkpoint({"step": 2, "bad": lambda: None}, path)  # a lambda cannot be pickled
    assert load_checkpoint(path)["step"] == 1


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_checkpoint_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"x": _Evil()}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)
