"""Atomic writes: the file and folder forms publish whole or leave nothing behind."""
import os
import stat

import pytest

from megatron_ultralong import atomic
from megatron_ultralong.atomic import DIR_MODE, FILE_MODE, atomic_dir, atomic_path, publish_dir, write_text_atomic


def test_atomic_path_replaces_the_file_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "sub" / "out.json"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp, open(tmp, "w") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    with atomic_path(target) as tmp, open(tmp, "w") as f:
        f.write("new")
    assert target.read_text() == "new"
    assert sorted(os.listdir(target.parent)) == ["out.json"]  # no temp file left either way
    assert stat.S_IMODE(target.stat().st_mode) == FILE_MODE


def test_atomic_dir_publishes_the_whole_folder_or_nothing(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp_path / "model_marker").write_text("")
            open(os.path.join(tmp, "a.bin"), "w").close()
            raise RuntimeError("killed")
    assert sorted(os.listdir(tmp_path)) == ["model_marker"]
    out.mkdir()  # an empty folder may be filled
    with atomic_dir(out) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and os.path.basename(tmp).startswith(".model.")
        with open(os.path.join(tmp, "a.bin"), "w") as f:
            f.write("x")
    assert sorted(os.listdir(tmp_path)) == ["model", "model_marker"]
    assert (out / "a.bin").read_text() == "x"
    assert stat.S_IMODE(out.stat().st_mode) == DIR_MODE


def test_publish_dir_refuses_to_replace_a_non_empty_folder(tmp_path):
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "keep").write_text("")
    (tmp_path / ".final.tmp").mkdir()
    with pytest.raises(OSError):
        publish_dir(tmp_path / ".final.tmp", tmp_path / "final")
    assert os.listdir(tmp_path / "final") == ["keep"]


def test_publish_file_flushes_the_file_renames_it_then_flushes_the_folder(tmp_path, monkeypatch):
    synced = []
    real = atomic.fsync_path
    monkeypatch.setattr(atomic, "fsync_path", lambda p: (synced.append(os.fspath(p)), real(p)))
    (tmp_path / "out.jsonl").write_text("old")
    (tmp_path / "out.jsonl.partial").write_text("new")
    atomic.publish_file(tmp_path / "out.jsonl.partial", tmp_path / "out.jsonl")
    assert (tmp_path / "out.jsonl").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["out.jsonl"]
    assert synced == [str(tmp_path / "out.jsonl.partial"), str(tmp_path)]
