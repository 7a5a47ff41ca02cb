"""Files written atomically and durably, with a content hash beside them, checked when read.

A leaf module (no torch, nothing of deepmetric but its errors) for every writer: checkpoints, the index, exported
models, metrics, reports.

- `atomic_write_bytes(path, write)`: ``write(file)`` into a temporary file beside ``path`` (created with mode 0666
  less the umask, as ``open`` does), fsynced, renamed over ``path``, and the directory fsynced: a kill leaves the old
  file or the new one, never a mix; a leftover temporary file is named ``.NAME.XXXXXXXX.tmp`` (`remove_stale_tmp`).
- `write_with_hash(path, write)`: the same, and ``NAME.sha256`` beside it (``sha256sum -c`` reads it). While the file
  is replaced the hash file lists the new and the old hash, so a kill at any moment leaves a file its hash file
  accepts. `verify_hash(path)` raises `IntegrityError` naming the file when it does not match.
- `move_with_hash(src, dst)`: rename a file and its hash file under the same guarantee (keeping a previous version).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path

from .errors import RunError

HASH_SUFFIX = ".sha256"
_TMP = re.compile(r"^\..+\.[0-9a-z_]{8}\.tmp$")  # ours, and tempfile.mkstemp's of earlier versions


class IntegrityError(RunError):
    """A file does not match its recorded hash (corrupt or changed), or cannot be read."""


def hash_path(path: str | Path) -> Path:
    """Where ``path``'s hash is recorded: ``NAME.sha256`` beside it."""
    path = Path(path)
    return path.with_name(path.name + HASH_SUFFIX)


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fsync_dir(directory: str | Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_tmp(path: Path, write) -> Path:
    """``write(file)`` into a new temporary file beside ``path``, flushed and fsynced; its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)  # the umask applies, as for open(): 0644 under the usual 022
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _replace(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, rename it over ``path``, fsync the folder."""
    path = Path(path)
    _replace(_write_tmp(path, write), path)


def _recorded(path: Path) -> list[str]:
    """The hashes ``path``'s hash file accepts (empty when it has none)."""
    try:
        lines = hash_path(path).read_text().splitlines()
    except (FileNotFoundError, UnicodeDecodeError):
        return []
    return [line.split()[0].lower() for line in lines if line.strip()]


def _record(path: Path, digests: list[str]) -> None:
    text = "".join(f"{d}  {path.name}\n" for d in dict.fromkeys(digests))
    atomic_write_bytes(hash_path(path), lambda f: f.write(text.encode()))


def write_with_hash(path: str | Path, write) -> str:
    """`atomic_write_bytes` with the file's sha256 recorded in ``NAME.sha256`` (written first listing the new and the
    old hash, narrowed to the new one after the rename: a kill at any moment leaves a matching pair); the hash."""
    path = Path(path)
    tmp = _write_tmp(path, write)
    try:
        digest = sha256_file(tmp)
        _record(path, [digest, *(_recorded(path) if path.exists() else [])])
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _replace(tmp, path)
    _record(path, [digest])
    return digest


def verify_hash(path: str | Path, *, required: bool = True) -> str | None:
    """Check ``path`` against ``NAME.sha256``; returns its hash. A mismatch, a missing file or (when ``required``) a
    missing hash file raises `IntegrityError` naming the file; without ``required`` a file with no hash file is
    accepted unchecked (returns None)."""
    path = Path(path)
    if not path.is_file():
        raise IntegrityError(f"{path} not found")
    expected = _recorded(path)
    if not expected:
        if required:
            raise IntegrityError(f"{path} has no recorded hash ({hash_path(path).name} missing): cannot verify it")
        return None
    actual = sha256_file(path)
    if actual not in expected:
        raise IntegrityError(
            f"{path} does not match its recorded hash in {hash_path(path).name} (sha256 {actual[:12]}… instead of "
            f"{expected[0][:12]}…): the file is corrupt or was changed; do not use it"
        )
    return actual


def move_with_hash(src: str | Path, dst: str | Path) -> None:
    """Rename ``src`` to ``dst`` (replacing it) with its hash file; at any moment ``dst`` matches its hash file."""
    src, dst = Path(src), Path(dst)
    digests = _recorded(src) or [sha256_file(src)]  # a file written before hashes: recorded as it is
    _record(dst, [*digests, *(_recorded(dst) if dst.exists() else [])])
    os.replace(src, dst)
    fsync_dir(dst.parent)
    _record(dst, digests)
    hash_path(src).unlink(missing_ok=True)


def remove_file_with_hash(path: str | Path) -> None:
    path = Path(path)
    path.unlink(missing_ok=True)
    hash_path(path).unlink(missing_ok=True)


def remove_stale_tmp(directory: str | Path) -> list[Path]:
    """Delete the temporary files `atomic_write_bytes` left in ``directory`` when a process was killed mid-write (only
    names of its ``.NAME.XXXXXXXX.tmp`` form); returns them. Call it only when no other process writes there."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if _TMP.match(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
