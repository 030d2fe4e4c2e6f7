"""RunFolder on its own: the files that make a run, last_checkpoint, pruning, the logs' truncation,
temporary files and the lock (the loop's use of them: test_loop.py)."""

import json
import os

import numpy as np
import pytest

from minimaskrcnn.nn.module import Param
from minimaskrcnn.training.optim import SGD
from minimaskrcnn.training.run_folder import (
    RunFolder,
    RunFolderError,
    checkpoint_iteration,
    find_last_checkpoint,
    read_jsonl,
)


def test_checkpoint_names_and_iterations(tmp_path):
    folder = RunFolder(str(tmp_path))
    assert folder.checkpoint_path(300) == str(tmp_path / "checkpoint_000300.npz")
    assert checkpoint_iteration(folder.checkpoint_path(300)) == 300
    assert checkpoint_iteration("weights.npz") == 0


def test_an_empty_or_missing_folder_holds_no_run(tmp_path):
    assert RunFolder(str(tmp_path)).run_files() == []
    missing = RunFolder(str(tmp_path / "nope"))
    assert missing.run_files() == [] and missing.last_checkpoint() is None
    assert missing.config_name() is None and missing.stored_config() is None


def test_save_points_last_checkpoint_at_the_newest_and_prune_keeps_it(tmp_path):
    folder = RunFolder(str(tmp_path))
    p = Param(np.ones(3, np.float32), "w")
    opt = SGD([("w", p)], lr=0.1)
    for it in (1, 2, 3):
        path = folder.save_checkpoint({"w": p}, opt, it, {"name": "x"}, {"seed": 0})
    assert folder.last_checkpoint() == path == find_last_checkpoint(str(tmp_path))
    assert folder.run_files() == ["last_checkpoint", "checkpoint_000001.npz",
                                  "checkpoint_000002.npz", "checkpoint_000003.npz"]
    folder.prune_checkpoints()
    assert [os.path.basename(c) for c in folder.checkpoints()] == ["checkpoint_000003.npz"]
    os.remove(path)
    with pytest.raises(FileNotFoundError, match="names 'checkpoint_000003.npz'"):
        folder.last_checkpoint()


def test_config_name_and_remove_run(tmp_path):
    folder = RunFolder(str(tmp_path))
    folder.write_config({"name": "nuclei-mini-demo"})
    (tmp_path / "log.jsonl").write_text("{}\n")
    (tmp_path / "loss_curve.png").write_bytes(b"png")
    (tmp_path / "notes.txt").write_text("mine")
    assert folder.config_name() == "nuclei-mini-demo"
    assert folder.run_files() == ["config.json", "log.jsonl"]
    folder.remove_run()
    assert os.listdir(tmp_path) == ["notes.txt"]  # only the run's files go
    (tmp_path / "config.json").write_text("[1, 2]")
    assert folder.config_name() is None


def test_truncate_logs_keeps_what_precedes_the_checkpoint(tmp_path):
    folder = RunFolder(str(tmp_path))
    (tmp_path / "log.jsonl").write_text("".join(json.dumps({"iteration": t}) + "\n"
                                                for t in range(6)) + '{"iteration": 6, "lr"')
    (tmp_path / "val.jsonl").write_text("".join(json.dumps({"iteration": t, "AP": t / 10}) + "\n"
                                                for t in (2, 4, 6)))
    with pytest.warns(RuntimeWarning, match=r"log\.jsonl:7: dropped a torn last line"):
        vals = folder.truncate_logs(4)
    assert [r["iteration"] for r in read_jsonl(folder.log_path)] == [0, 1, 2, 3]
    assert [v["iteration"] for v in vals] == [2, 4]  # the validation at the checkpoint stays
    assert [v["iteration"] for v in read_jsonl(folder.val_path)] == [2, 4]
    assert not (tmp_path / "none.jsonl").exists() and read_jsonl(str(tmp_path / "none.jsonl")) == []


def test_temporary_files_of_killed_writes_are_removed(tmp_path):
    for name in (".tmp-checkpoint_000006.npz-x1", ".tmp-log.jsonl-y2", "last_checkpoint.tmp",
                 "config.json.tmp", "keep.tmp.txt"):
        (tmp_path / name).write_bytes(b"half")
    RunFolder(str(tmp_path)).remove_temporary_files()
    assert os.listdir(tmp_path) == ["keep.tmp.txt"]


def test_the_lock_is_exclusive_and_released(tmp_path):
    folder = RunFolder(str(tmp_path))
    with folder.lock():
        assert (tmp_path / "train.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(RunFolderError, match=rf"another training \(pid {os.getpid()}\)"), \
                folder.lock():
            pass
    with folder.lock():  # released on leaving
        pass
