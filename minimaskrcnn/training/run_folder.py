"""The run folder of a training: its files, its lock, its checkpoints and its logs.

Files in a run folder (Detectron2's ``OUTPUT_DIR`` with its ``last_checkpoint`` and
``metrics.json``)::

    config.json                     the Config (JSON) and the class names (checkpoint_config)
    log.jsonl                       one JSON line per iteration: iteration, lr, the loss terms,
                                    loss (their sum), seconds (wall clock), cpu_seconds (all
                                    threads of the process), images_per_s; a failed iteration
                                    also has "error"
    val.jsonl                       one line per validation: iteration and the metrics
    checkpoint_<iteration>.npz      (``<iteration>`` = iterations done, 6 digits)
    last_checkpoint                 the name of the newest checkpoint (what resume loads)
    loss_curve.png                  the loss terms against the iteration
    train.lock                      locked (``fcntl.flock``) while a training runs, holds its
                                    pid; the kernel drops the lock when the process dies, so a
                                    lock left by a killed run is simply taken over

Every file but the logs is written atomically (:mod:`minimaskrcnn._atomic`: a kill leaves the
old file or the new one), the logs are appended line by line, and a resumed run cuts them back
to its checkpoint atomically (:meth:`RunFolder.truncate_logs`), dropping a torn last line (a
kill in the middle of a write) with a warning.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re
import warnings

from minimaskrcnn._atomic import temporary_files, write_atomic
from minimaskrcnn.checkpoint import (
    config_from_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from minimaskrcnn.config import Config

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS: no lock
    fcntl = None

__all__ = ["RunFolder", "RunFolderError", "checkpoint_iteration", "find_last_checkpoint",
           "read_jsonl"]

CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
VAL_FILE = "val.jsonl"
LAST_FILE = "last_checkpoint"
CURVE_FILE = "loss_curve.png"
LOCK_FILE = "train.lock"
RUN_FILES = (CONFIG_FILE, LAST_FILE, LOG_FILE, VAL_FILE)
"""Any of these (or a ``checkpoint_*.npz``) means the folder holds a run."""


class RunFolderError(RuntimeError):
    """The run folder cannot be trained into: it holds another run (and neither ``resume`` nor
    ``overwrite`` was given), another training holds its lock, or a resume changes a setting
    that must stay fixed. The message names the folder or file and the setting."""


def checkpoint_iteration(path: str) -> int:
    """The iteration in a checkpoint's name (``checkpoint_000300.npz`` -> 300; 0 for another
    name)."""
    m = re.search(r"checkpoint_(\d+)\.npz$", path)
    return int(m.group(1)) if m else 0


class RunFolder:
    """The files of one training run in the folder ``path`` (see the module docstring).

    Attributes:
        path: the folder; config_path, log_path, val_path, last_path, curve_path, lock_path:
            its files.
    """

    def __init__(self, path: str):
        self.path = path
        self.config_path = os.path.join(path, CONFIG_FILE)
        self.log_path = os.path.join(path, LOG_FILE)
        self.val_path = os.path.join(path, VAL_FILE)
        self.last_path = os.path.join(path, LAST_FILE)
        self.curve_path = os.path.join(path, CURVE_FILE)
        self.lock_path = os.path.join(path, LOCK_FILE)

    # ----------------------------------------------------------------------------------------
    # checkpoints

    def checkpoint_path(self, iteration: int) -> str:
        """``<path>/checkpoint_<iteration, 6 digits>.npz``."""
        return os.path.join(self.path, f"checkpoint_{iteration:06d}.npz")

    def checkpoints(self) -> list[str]:
        """Paths of every checkpoint in the folder, oldest first."""
        return sorted(glob.glob(os.path.join(self.path, "checkpoint_*.npz")))

    def last_checkpoint(self) -> str | None:
        """Path of the newest checkpoint (named by ``last_checkpoint``), or None without one.

        Raises:
            FileNotFoundError: ``last_checkpoint`` names a file that does not exist.
        """
        if not os.path.isfile(self.last_path):
            return None
        with open(self.last_path, encoding="utf-8") as f:
            name = f.read().strip()
        ckpt = os.path.join(self.path, name)
        if not name or os.sep in name or not os.path.isfile(ckpt):
            raise FileNotFoundError(f"{self.last_path} names {name!r}, which does not exist")
        return ckpt

    def save_checkpoint(self, model, optimizer, iteration: int, config: dict,
                        rng_state: dict) -> str:
        """Write ``checkpoint_<iteration>.npz`` (:func:`~minimaskrcnn.checkpoint.
        save_checkpoint`), then point ``last_checkpoint`` at it; returns its path. A kill
        between the two leaves ``last_checkpoint`` at the previous one."""
        path = self.checkpoint_path(iteration)
        save_checkpoint(path, model, optimizer=optimizer, iteration=iteration, config=config,
                        rng_state=rng_state)
        write_atomic(self.last_path, os.path.basename(path) + "\n")
        return path

    def stored_config(self) -> Config | None:
        """The Config of the last checkpoint (checked), or None without a checkpoint.

        Raises:
            CheckpointError: the checkpoint or its config is bad (one line naming the file).
        """
        path = self.last_checkpoint()
        return None if path is None else config_from_checkpoint(load_checkpoint(path))

    def prune_checkpoints(self) -> None:
        """Remove every checkpoint but the last (what ``evaluate`` or a resume would read)."""
        last = self.last_checkpoint()
        for p in self.checkpoints():
            if last is None or os.path.basename(p) != os.path.basename(last):
                os.remove(p)

    # ----------------------------------------------------------------------------------------
    # the folder as a whole

    def run_files(self) -> list[str]:
        """Names of the files that make this folder hold a run (:data:`RUN_FILES` and the
        checkpoints); empty for a new or empty folder."""
        names = [n for n in RUN_FILES if os.path.exists(os.path.join(self.path, n))]
        return names + [os.path.basename(p) for p in self.checkpoints()]

    def config_name(self) -> str | None:
        """The ``name`` in ``config.json`` (the preset's, ``nuclei-mini-demo`` for the demo),
        or None without a readable one."""
        try:
            with open(self.config_path, encoding="utf-8") as f:
                name = json.load(f).get("name")
        except (OSError, ValueError, AttributeError):
            return None
        return name if isinstance(name, str) else None

    def write_config(self, config: dict) -> None:
        """Write ``config.json`` (atomically)."""
        write_atomic(self.config_path, json.dumps(config, indent=2))

    def remove_run(self) -> None:
        """Remove the run's files (:meth:`run_files`) and its loss curve; other files stay."""
        for name in (*self.run_files(), CURVE_FILE):
            path = os.path.join(self.path, name)
            if os.path.exists(path):
                os.remove(path)

    def remove_temporary_files(self) -> None:
        """Remove what killed writes left: ``.tmp-*`` files (:mod:`minimaskrcnn._atomic`), and
        ``<file>.tmp`` of the run's files (the temporary names before the one writer). Only
        while holding the lock."""
        for path in temporary_files(self.path):
            os.remove(path)
        for name in RUN_FILES:
            tmp = os.path.join(self.path, name + ".tmp")
            if os.path.exists(tmp):
                os.remove(tmp)

    @contextlib.contextmanager
    def lock(self):
        """Hold ``train.lock`` for the duration (exclusive ``flock``, released by the kernel if
        the process dies, so a stale lock of a dead process is taken over; no lock where
        ``fcntl`` is missing).

        Raises:
            RunFolderError: another process holds it (the message names its pid).
        """
        if fcntl is None:  # pragma: no cover
            yield
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
                raise RunFolderError(f"{self.path}: another training (pid {holder}) is running "
                                     f"in this folder (it holds {self.lock_path})") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            yield
        finally:
            os.close(fd)  # releases the lock

    # ----------------------------------------------------------------------------------------
    # logs

    def read_log(self) -> list[dict]:
        """The records of ``log.jsonl`` (:func:`read_jsonl`)."""
        return read_jsonl(self.log_path)

    def append_val(self, record: dict) -> None:
        """Append one validation record to ``val.jsonl``."""
        with open(self.val_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_logs(self, iteration: int) -> list[dict]:
        """Cut the logs back to a checkpoint at ``iteration`` (a resumed run writes the rest
        again): ``log.jsonl`` keeps the iterations before it, ``val.jsonl`` the validations at
        or before it; each file is replaced atomically. Returns the validations kept.

        Raises:
            ValueError: a line before the last is not a JSON object (names the file and line).
        """
        _truncate_jsonl(self.log_path, iteration)
        return _truncate_jsonl(self.val_path, iteration + 1)


def find_last_checkpoint(out_dir: str) -> str | None:
    """Path of the newest checkpoint of a run folder (``last_checkpoint``), or None
    (:meth:`RunFolder.last_checkpoint`).

    Raises:
        FileNotFoundError: ``last_checkpoint`` names a file that does not exist.
    """
    return RunFolder(out_dir).last_checkpoint()


def read_jsonl(path: str) -> list[dict]:
    """The records of a JSON-lines log (``[]`` without the file). A torn last line (a kill in
    the middle of a write) is dropped with a warning.

    Raises:
        ValueError: a line before the last is not a JSON object (names the file and line).
    """
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = [(k + 1, line) for k, line in enumerate(f) if line.strip()]
    records = []
    for n, (lineno, line) in enumerate(lines):
        try:
            r = json.loads(line)
            if not isinstance(r, dict):
                raise ValueError(f"a JSON {type(r).__name__}, not an object")
        except ValueError as e:
            if n == len(lines) - 1:
                warnings.warn(f"{path}:{lineno}: dropped a torn last line ({e})", RuntimeWarning,
                              stacklevel=2)
                break
            raise ValueError(f"{path}:{lineno}: not a JSON record ({e})") from None
        records.append(r)
    return records


def _iteration_of(r: dict) -> int | float:
    it = r.get("iteration")
    return it if isinstance(it, int) and not isinstance(it, bool) else math.inf


def _truncate_jsonl(path: str, iteration: int) -> list[dict]:
    """Keep the records of iterations before ``iteration``, replacing the file atomically."""
    records = [r for r in read_jsonl(path) if _iteration_of(r) < iteration]
    if os.path.exists(path):
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
    return records
