"""The model registry's storage: atomic, fsynced writes and renames and a lock per model under one
root folder. Every filesystem access of the registry goes through `FileStore`, the seam for an
object store later."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

# -- storage seam ----------------------------------------------------------------------------


class FileStore:
    """The registry's only access to storage: a local directory tree with atomic operations.

    Keys are '/'-separated paths relative to the root. An object-storage implementation needs
    the same operations: conditional put for `publish`, a single-object put for
    `write_atomic`, and a lease for `lock`.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def read_bytes(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def list_dir(self, key: str) -> list[str]:
        target = self.path(key)
        return sorted(p.name for p in target.iterdir()) if target.is_dir() else []

    def write_atomic(self, key: str, data: bytes) -> None:
        """Replace `key` with `data` in one rename: readers see the old or the new, whole."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        try:
            _write_synced(tmp, data)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)

    def append_line(self, key: str, line: str) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("a", encoding="utf-8") as fh:
            fh.write(line.rstrip("\n") + "\n")

    def publish(self, key: str, files: Mapping[str, bytes], trees: Mapping[str, Path]) -> None:
        """Create directory `key` holding `files` and copies of `trees`, all at once.

        Written into a hidden sibling and renamed; raises FileExistsError if `key` exists.
        """
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            raise FileExistsError(str(target))
        tmp = target.with_name(f".tmp-{target.name}-{uuid.uuid4().hex}")
        try:
            tmp.mkdir()
            for name, data in files.items():
                _write_synced(tmp / name, data)
            for name, source in trees.items():
                _copy_tree(Path(source), tmp / name)
            _fsync_dir(tmp)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(target.parent)

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Exclusive advisory lock, across processes and threads (each open is its own lock)."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock


def _copy_tree(source: Path, target: Path) -> None:
    """Copy the folders and files of `source` to `target` with the modes new ones get here
    (0o777 / 0o666 less the umask), not the source's: `shutil.copytree` copies each folder's
    mode, and a report written in a private temporary folder (0700) became a folder that
    only its owner could read in the registry."""
    for folder, _, files in os.walk(source):
        here = target / Path(folder).relative_to(source)
        here.mkdir()
        for name in files:
            shutil.copyfile(Path(folder) / name, here / name)


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # makes a rename durable across a power cut; not every filesystem allows it
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
