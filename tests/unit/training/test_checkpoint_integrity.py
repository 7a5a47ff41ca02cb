"""Files with their hash: garbled bytes are caught, a kill at any moment leaves a file its hash accepts, modes follow
the umask, stale temporary files are found."""

import os
import stat

import pytest
import torch

from deepmetric.integrity import (
    IntegrityError,
    atomic_write_bytes,
    hash_path,
    remove_stale_tmp,
    verify_hash,
    write_with_hash,
)
from deepmetric.training.checkpoint import load_checkpoint, save_checkpoint, write_json


def garble(path, n=8):
    """Flip ``n`` bytes in the middle of ``path`` (the fault of a bad disk or a bad copy)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + n] = bytes(b ^ 0xFF for b in data[mid : mid + n])
    path.write_bytes(bytes(data))


def test_garbled_checkpoint_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint({"w": torch.arange(10_000.0)}, path)
    assert hash_path(path).read_text().split() == [verify_hash(path), "best.pt"]  # sha256sum -c reads it
    garble(path)
    with pytest.raises(IntegrityError, match=r"best\.pt does not match its recorded hash"):
        load_checkpoint(path)


def test_checkpoint_without_a_hash_loads_with_a_warning(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"step": 3}, path)  # written by an earlier version
    with pytest.warns(UserWarning, match=r"old\.pt has no recorded hash"):
        assert load_checkpoint(path)["step"] == 3
    with pytest.raises(IntegrityError, match="no recorded hash"):
        verify_hash(path)


@pytest.mark.parametrize("kill_at", range(6))
def test_a_kill_at_any_rename_leaves_checkpoints_their_hashes_accept(tmp_path, monkeypatch, kill_at):
    """``save_checkpoint(..., previous=...)`` renames 6 times (hash files and checkpoints); a kill before any of them
    leaves every present checkpoint matching its hash file, and the newest intact state is 1 or 2."""
    last, prev = tmp_path / "last.pt", tmp_path / "last.prev.pt"
    save_checkpoint({"step": 0}, last)
    save_checkpoint({"step": 1}, last, previous=prev)
    calls, real_replace = [], os.replace

    def replace(src, dst):
        if len(calls) == kill_at:
            raise KeyboardInterrupt("killed")
        calls.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2}, last, previous=prev)
    monkeypatch.undo()
    steps = [load_checkpoint(p)["step"] for p in (last, prev) if p.is_file()]  # each verified against its hash
    assert steps and max(steps) in (1, 2)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    save_checkpoint({"step": 3}, last, previous=prev)  # the next save repairs the pair
    assert load_checkpoint(last)["step"] == 3 and load_checkpoint(prev)["step"] in (1, 2)
    assert len(hash_path(last).read_text().splitlines()) == 1


def test_write_with_hash_for_other_files(tmp_path):
    path = tmp_path / "index.faiss"
    digest = write_with_hash(path, lambda f: f.write(b"vectors" * 100))
    assert verify_hash(path) == digest
    path.write_bytes(b"vectors" * 99 + b"vectorz")
    with pytest.raises(IntegrityError, match=r"index\.faiss"):
        verify_hash(path)


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.npy", lambda f: f.write(b"x"))
        write_json(tmp_path / "m.json", {"a": 1})
        save_checkpoint({"step": 1}, tmp_path / "c.pt")
    finally:
        os.umask(old)
    for name in ("a.npy", "m.json", "c.pt", "c.pt.sha256"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_stale_temporary_files_are_removed_and_nothing_else(tmp_path):
    stale = [tmp_path / ".last.pt.0a1b2c3d.tmp", tmp_path / ".metrics.json.k_9x2mqz.tmp"]  # ours, mkstemp's
    kept = [tmp_path / "notes.tmp", tmp_path / "last.pt", tmp_path / ".hidden"]
    for p in stale + kept:
        p.write_bytes(b"")
    assert sorted(remove_stale_tmp(tmp_path)) == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted(kept)
