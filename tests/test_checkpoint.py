"""Checkpoints: atomic writes, safe loads."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from framework.checkpoint import load_checkpoint, save_checkpoint
from tests.helpers import FullDisk


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
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    zipped, raw = tmp_path / "evil.pt", tmp_path / "raw.pt"
    torch.save({"step": 0, "x": _Evil(marker)}, zipped)  # a real torch.save archive carrying code
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(zipped)
    with open(raw, "wb") as f:  # a bare pickle: not even a torch.save archive
        pickle.dump({"x": _Evil(marker)}, f, protocol=2)
    with pytest.raises(ValueError, match="not a torch.save zip archive"):
        load_checkpoint(raw)
    assert not marker.exists()


def test_a_flipped_byte_in_tensor_data_is_caught(tmp_path):
    """torch.load alone returns the corrupted tensor; the CRC-32 of each record catches it."""
    path = tmp_path / "last.pt"
    w = torch.randn(256, 256)
    save_checkpoint({"model": {"w": w}, "step": 3}, path)
    data = bytearray(path.read_bytes())
    i = data.index(w.numpy().tobytes()[:64]) + 1000  # inside the tensor's bytes
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["model"]["w"], w)  # silent without the check
    with pytest.raises(ValueError, match="fails its CRC-32 check"):
        load_checkpoint(path)


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.randn(64, 64)}, "step": 3}, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="not a torch.save zip archive"):
        load_checkpoint(path)


def test_checkpoints_carry_crcs_even_when_pytorch_is_told_not_to(tmp_path):
    config = torch.utils.serialization.config.save
    config.compute_crc32 = False
    try:
        save_checkpoint({"model": {"w": torch.randn(8, 8)}, "step": 1}, tmp_path / "last.pt")
        assert config.compute_crc32 is False  # the user's setting is put back
    finally:
        config.compute_crc32 = True
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 1


def test_a_checkpoint_with_code_is_refused_without_advising_weights_only_false(tmp_path):
    """PyTorch's own message says to re-run with weights_only=False; ours must not."""
    from framework.checkpoint import read_resume_checkpoint
    from framework.errors import ConfigError

    marker = tmp_path / "pwned"
    torch.save({"step": 0, "model": {}, "x": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(ConfigError) as info:
        read_resume_checkpoint(tmp_path / "evil.pt", "resume")
    message = str(info.value)
    assert "could run code when loaded; refused" in message and "weights_only" not in message
    assert not marker.exists()


def full_disk(monkeypatch, room):
    """Files opened for writing by the framework's writers get ``room`` bytes."""
    import builtins

    import framework.loggers

    def open_on_full_disk(path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)
        return FullDisk(f, room) if "w" in mode or "a" in mode else f

    monkeypatch.setattr(framework.loggers, "open", open_on_full_disk, raising=False)


def test_a_full_disk_names_the_file_removes_the_temporary_one_and_keeps_the_old(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1, "w": torch.zeros(10)}, path)
    before = path.read_bytes()
    full_disk(monkeypatch, 4096)
    with pytest.raises(OSError) as info:
        save_checkpoint({"step": 2, "w": torch.zeros(100_000)}, path)  # 400 kB: does not fit
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(path))
    assert os.listdir(tmp_path) == ["last.pt"] and path.read_bytes() == before


def test_best_is_the_same_bytes_as_last_and_keeps_them_when_last_moves_on(tmp_path):
    from framework.checkpoint import copy_checkpoint

    save_checkpoint({"step": 4}, tmp_path / "last.pt")
    copy_checkpoint(tmp_path / "last.pt", tmp_path / "best.pt")
    assert (tmp_path / "best.pt").read_bytes() == (tmp_path / "last.pt").read_bytes()
    assert os.stat(tmp_path / "best.pt").st_ino == os.stat(tmp_path / "last.pt").st_ino  # linked, not rewritten
    save_checkpoint({"step": 8}, tmp_path / "last.pt")  # the next epoch replaces last.pt
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 4 and load_checkpoint(tmp_path / "last.pt")["step"] == 8
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "last.pt"]


def test_best_is_copied_where_there_are_no_hard_links_and_a_full_disk_keeps_the_old_one(tmp_path, monkeypatch):
    import builtins
    import errno

    from framework.checkpoint import copy_checkpoint

    def no_links(*args):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    save_checkpoint({"step": 4}, tmp_path / "last.pt")
    copy_checkpoint(tmp_path / "last.pt", tmp_path / "best.pt")
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 4
    assert os.stat(tmp_path / "best.pt").st_ino != os.stat(tmp_path / "last.pt").st_ino
    save_checkpoint({"step": 8}, tmp_path / "last.pt")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, mode="r", *a, **k: FullDisk(real_open(f, mode, *a, **k), 100)
                        if str(f).endswith("best.pt.tmp") else real_open(f, mode, *a, **k))
    with pytest.raises(OSError) as info:
        copy_checkpoint(tmp_path / "last.pt", tmp_path / "best.pt")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "best.pt")
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 4  # the previous best is intact
    assert sorted(os.listdir(tmp_path)) == ["best.pt", "last.pt"]  # no temporary file left
