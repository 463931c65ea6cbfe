"""Atomic writes of files and folders: readers (and crashes) see the old version or the whole new one.

    with atomic_path("out/result.json") as tmp, open(tmp, "w") as f:   # a file
        json.dump(result, f)
    write_text_atomic("ckpt/latest", "iter_0000020\\n")                # a small text file
    with atomic_dir("hf/llama-1m") as tmp:                              # a folder, published whole
        write_model(tmp)

Both forms: a hidden temp path in the same folder, fsync (a folder: every file in it), rename, fsync the parent
folder; the temp path is removed on error. Callers that stage a file or folder under a name of their own publish it
with ``publish_file`` / ``publish_dir``. Details: docs/training.md.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # mkstemp creates 0600 files; outputs get the usual permissions
DIR_MODE = 0o777 & ~_umask()  # mkdtemp creates 0700 folders; the published folder gets the usual ones


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's data, or a folder's entries (the renames into and out of it), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_file(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename the finished, closed file ``tmp`` over ``path`` (same folder) after flushing it to disk; then make
    the rename durable (fsync of the folder)."""
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path`` to write (and close) a file at; when the block succeeds the file is
    fsynced and renamed over ``path``; when it fails the temporary file is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, FILE_MODE)
    try:
        yield tmp
        publish_file(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (see atomic_path)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def publish_dir(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename the finished folder ``tmp`` to ``path`` (which must not exist, or be an empty folder), after
    flushing everything inside it; then make the rename durable."""
    for root, _, files in os.walk(tmp):
        for name in files:
            fsync_path(os.path.join(root, name))
        fsync_path(root)
    if os.path.isdir(path):
        os.rmdir(path)  # an empty folder the caller was allowed to fill; a non-empty one raises OSError
    os.rename(tmp, path)
    fsync_path(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[str]:
    """Yield a hidden temporary folder next to ``path`` to fill; when the block succeeds it is published as
    ``path`` (see publish_dir), when it fails it is deleted. ``path`` must not exist or be an empty folder."""
    final = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.", suffix=".tmp", dir=parent)
    os.chmod(tmp, DIR_MODE)
    try:
        yield tmp
        publish_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
