"""Atomic writes: the old file or the new one, never a partial file, no stray temporaries."""

import json

import pytest

from vimpac.io import atomic_path, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "sub" / "state.json"
    atomic_write_json(target, {"step": 1})
    atomic_write_json(target, {"step": 2})
    assert json.loads(target.read_text()) == {"step": 2}
    assert [p.name for p in target.parent.iterdir()] == ["state.json"]


def test_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.bin"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_suffix_is_kept_for_libraries_that_need_it(tmp_path):
    with atomic_path(tmp_path / "w.safetensors", suffix=".safetensors") as tmp:
        assert tmp.name.endswith(".safetensors")
        tmp.write_bytes(b"x")
    assert (tmp_path / "w.safetensors").read_bytes() == b"x"


def test_written_files_get_umask_permissions(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644


def test_files_replaced_by_their_writer_get_umask_permissions(tmp_path):
    # safetensors' save_file writes its own owner-only file over the temporary one.
    import os

    import torch
    from safetensors.torch import save_file

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "w.safetensors", suffix=".safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
    finally:
        os.umask(old)
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644


def test_a_safetensors_write_that_fails_is_an_os_error_naming_the_file(tmp_path):
    # safetensors reports a full disk as its own SafetensorError, without the file's name (this is
    # its message); the CLI reports an OSError in one line, and that one was a traceback.
    import errno

    from safetensors import SafetensorError

    target = tmp_path / "model.safetensors"
    atomic_write_text(target, "old")
    with pytest.raises(OSError) as raised:
        with atomic_path(target, suffix=".safetensors"):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert raised.value.errno == errno.ENOSPC and raised.value.strerror == "No space left on device"
    assert raised.value.filename == str(target)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_other_safetensors_errors_pass_through_unchanged(tmp_path):
    from safetensors import SafetensorError

    with pytest.raises(SafetensorError, match="invalid header"):
        with atomic_path(tmp_path / "w.safetensors", suffix=".safetensors"):
            raise SafetensorError("Error while deserializing header: invalid header")


@pytest.mark.parametrize("code", ["EIO", "ENOSPC"])
def test_a_write_that_fails_at_fsync_is_an_os_error_naming_the_file(tmp_path, monkeypatch, code):
    # Data the disk cannot keep may surface only at fsync, whose OSError names no file: the CLI's
    # one line read "[Errno 5] Input/output error" without saying which file was lost.
    import errno
    import os

    target = tmp_path / "state.json"
    atomic_write_text(target, "old")
    error = getattr(errno, code)

    def failing_fsync(fd):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError) as raised:
        atomic_write_text(target, "new")
    assert raised.value.errno == error and raised.value.strerror == os.strerror(error)
    assert raised.value.filename == str(target)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_replaced_folder_is_made_durable_before_the_old_one_is_deleted(tmp_path, monkeypatch):
    """write_folder renamed the old folder aside and the new one into place, then deleted the old
    one, with no fsync of their parent: after a power loss the deletion could persist and the
    renames not, leaving neither folder."""
    import shutil

    from vimpac import io as io_module

    out = tmp_path / "tok"
    io_module.write_folder(out, replace=False, write=lambda folder: (folder.mkdir(), (folder / "a").write_text("old")))
    events = []
    real_fsync_dir, real_rmtree = io_module.fsync_dir, shutil.rmtree
    monkeypatch.setattr(io_module, "fsync_dir", lambda folder: (events.append(("fsync", folder)), real_fsync_dir(folder)))
    monkeypatch.setattr(shutil, "rmtree", lambda path, **kw: (events.append(("rmtree", path)), real_rmtree(path, **kw)))
    io_module.write_folder(out, replace=True, write=lambda folder: (folder / "a").write_text("new"))
    assert (out / "a").read_text() == "new"
    assert [kind for kind, _ in events] == ["fsync", "rmtree"] and events[0][1] == tmp_path
