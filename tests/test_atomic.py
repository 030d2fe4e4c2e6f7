"""minimaskrcnn._atomic: the one atomic writer (a kill leaves the old file or the new one)."""

import errno
import os

import pytest

from minimaskrcnn._atomic import TMP_PREFIX, open_atomic, temporary_files, write_atomic


def test_write_replaces_the_file_with_a_new_files_permissions(tmp_path):
    path = tmp_path / "a.txt"
    write_atomic(str(path), "old\n")
    write_atomic(str(path), "new ü\n")
    assert path.read_text(encoding="utf-8") == "new ü\n"
    write_atomic(str(tmp_path / "b.bin"), b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    plain = tmp_path / "plain.txt"
    plain.write_text("x")  # open() of a new file: 0666 less the umask
    assert os.stat(path).st_mode & 0o777 == os.stat(plain).st_mode & 0o777
    assert temporary_files(str(tmp_path)) == []


def test_an_error_in_the_middle_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    write_atomic(str(path), "old\n")
    with pytest.raises(KeyboardInterrupt), open_atomic(str(path)) as f:
        f.write("half")
        raise KeyboardInterrupt  # a kill between two writes
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_a_kill_before_the_replace_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    write_atomic(str(path), "old\n")

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(str(path), "new\n")
    monkeypatch.undo()
    assert path.read_text() == "old\n" and temporary_files(str(tmp_path)) == []


def test_temporary_files_finds_what_killed_writes_left(tmp_path):
    (tmp_path / f"{TMP_PREFIX}log.jsonl-abc").write_text("half")
    (tmp_path / "log.jsonl").write_text("{}\n")
    assert temporary_files(str(tmp_path)) == [str(tmp_path / f"{TMP_PREFIX}log.jsonl-abc")]


def test_a_bad_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mode must be"), open_atomic(str(tmp_path / "a"), "a"):
        pass


def test_a_full_disk_names_the_file_and_leaves_the_old_one(tmp_path, monkeypatch):
    """issue 27: a write failing with ENOSPC (raised here by fsync, after the data went into
    the temporary file) leaves the old file whole, no temporary, and an error naming the file."""
    path = tmp_path / "metrics.json"
    write_atomic(str(path), "old\n")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device") as e:
        write_atomic(str(path), "new and longer\n")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert str(path) in str(e.value)
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["metrics.json"]
