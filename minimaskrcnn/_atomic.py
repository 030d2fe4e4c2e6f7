"""The project's one atomic file writer: a kill leaves the old file or the new one, never a
truncated one.

A write goes to a temporary file ``.tmp-<target name>-<random>`` in the target's directory
(:data:`TMP_PREFIX`; unique, so two writers never share one), is flushed and fsync'ed, given the
permissions of any new file (``0666`` less the umask, usually ``0644``: ``mkstemp`` makes
``0600`` files), then ``os.replace``'d over the target. An exception (a kill signal included)
removes the temporary file; one left by a killed process is found by :func:`temporary_files`.

Used for checkpoints, the run folder's files (``last_checkpoint``, ``config.json``, a truncated
``log.jsonl``), the ablations' ``result.json`` and summary, and the report page. It sits on the
floor of ``backend`` (standard library only), so every layer may use it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO

__all__ = ["TMP_PREFIX", "open_atomic", "temporary_files", "write_atomic"]

TMP_PREFIX = ".tmp-"
"""Temporary files of a write in progress are named ``.tmp-<target name>-<random>``."""


@contextlib.contextmanager
def open_atomic(path: str, mode: str = "w") -> Iterator[IO]:
    """A file object whose contents replace ``path`` when the ``with`` block ends normally.

    Args:
        path: the target file (its directory must exist).
        mode: ``"w"`` (text, UTF-8) or ``"wb"`` (bytes: ``np.savez`` writes through it).

    Raises:
        ValueError: another ``mode``.
        OSError: the directory cannot be written, or a write fails (a full disk: ``ENOSPC``);
            no temporary file is left, the target is untouched, and an error that names no
            file is raised again naming ``path`` (same ``errno``: ``str(e)`` reads ``[Errno
            28] No space left on device: '<path>'``).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"open_atomic: mode must be 'w' or 'wb', got {mode!r}")
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + os.path.basename(path) + "-", dir=directory)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.chmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and e.filename is None:  # a write: say which file
            raise OSError(e.errno, e.strerror or str(e), path) from e
        raise


def write_atomic(path: str, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically (:func:`open_atomic`)."""
    with open_atomic(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def temporary_files(directory: str) -> list[str]:
    """Paths of the temporary files in ``directory`` that killed writes left behind (sorted).
    Only remove them while no other process writes there (a run folder's lock)."""
    return [os.path.join(directory, n) for n in sorted(os.listdir(directory))
            if n.startswith(TMP_PREFIX)]


def _umask() -> int:
    """The process umask (read without changing it where Linux allows)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
