"""Checkpoints: parameters, optimiser state, iteration, config and RNG state in one ``.npz``.

File layout (a plain ``np.savez`` archive, readable with ``np.load(path, allow_pickle=False)``):

=========================  ===================================================================
key                        content
=========================  ===================================================================
``__meta__``               uint8 array holding UTF-8 JSON: ``{"format": "minimaskrcnn-checkpoint",
                           "version": 1, "iteration", "config", "rng_state", "optimizer"}``
                           (``optimizer``: the optimiser state with its arrays replaced by
                           ``{"__array__": key}`` references)
``param/<dotted name>``    one parameter array, dtype kept (float32), e.g. ``param/fpn.inner.0.weight``
``optim/<path>``           one optimiser array, e.g. ``optim/buffers/backbone.stem.conv.weight``
=========================  ===================================================================

Writes are atomic: the archive goes to a temporary file in the target's directory, is flushed
and fsync'ed, then ``os.replace``'d over the target, so a crash never leaves a half-written
checkpoint under the final name. Reading checks the format marker and every array, so a
truncated, corrupt or foreign file raises :class:`CheckpointError` naming the path and the
problem. Arrays round-trip bit-exactly.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field

import numpy as np

from minimaskrcnn.backend import to_numpy

FORMAT = "minimaskrcnn-checkpoint"
VERSION = 1
META_KEY = "__meta__"


class CheckpointError(ValueError):
    """A file is not a readable minimaskrcnn checkpoint (truncated, corrupt or foreign)."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns. ``ckpt["iteration"]`` works like ``ckpt.iteration``.

    Attributes:
        params: ``{dotted name: np.ndarray}``.
        optimizer_state: the dict given to :func:`save_checkpoint` (arrays as NumPy), or None.
        iteration: the iteration saved (the next one to run when resuming).
        config: the JSON config dict.
        rng_state: the JSON RNG state saved (a ``bit_generator.state`` dict when a Generator was
            given: rebuild it with :func:`generator_from_state`), or None.
        path: the file read.
    """

    params: dict[str, np.ndarray]
    optimizer_state: dict | None
    iteration: int
    config: dict = field(default_factory=dict)
    rng_state: dict | None = None
    path: str = ""

    def __getitem__(self, key: str):
        return getattr(self, key)


def generator_from_state(state: dict) -> np.random.Generator:
    """Rebuild an ``np.random.Generator`` from its ``bit_generator.state`` dict.

    Raises:
        ValueError: the state names no NumPy bit generator.
    """
    name = state.get("bit_generator") if isinstance(state, dict) else None
    cls = getattr(np.random, str(name), None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, np.random.BitGenerator):
        raise ValueError(f"not a NumPy bit generator state: {state!r:.200}")
    bg = cls()
    bg.state = state
    return np.random.Generator(bg)


def _params_dict(params) -> dict[str, np.ndarray]:
    if hasattr(params, "named_parameters"):
        return {name: to_numpy(p.data) for name, p in params.named_parameters()}
    return {str(k): to_numpy(v.data if hasattr(v, "grad") else v) for k, v in params.items()}


def _split_arrays(obj, prefix: str, arrays: dict):
    """Replace arrays inside a nested dict/list by references, collecting them in ``arrays``."""
    if isinstance(obj, dict):
        return {str(k): _split_arrays(v, f"{prefix}/{k}", arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_split_arrays(v, f"{prefix}/{i}", arrays) for i, v in enumerate(obj)]
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        arrays[prefix] = to_numpy(obj)
        return {"__array__": prefix}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _join_arrays(obj, arrays: dict):
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            return arrays[obj["__array__"]]
        return {k: _join_arrays(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join_arrays(v, arrays) for v in obj]
    return obj


def save_checkpoint(path: str, params, optimizer=None, iteration: int = 0,
                    config: dict | None = None, rng_state=None) -> str:
    """Write a checkpoint atomically.

    Args:
        path: target file (conventionally ``.npz``; the name is used as given).
        params: a :class:`~minimaskrcnn.nn.Module` (its ``named_parameters``) or a dict
            ``{name: array or Param}``.
        optimizer: an object with ``state_dict()`` (:class:`~minimaskrcnn.training.optim.SGD`)
            or a state dict (nested dicts/lists of JSON scalars and arrays), or None.
        iteration: the iteration count to store.
        config: JSON-serialisable dict (e.g. the run's configuration).
        rng_state: an ``np.random.Generator`` (its ``bit_generator.state`` is stored), a
            JSON-serialisable dict, or None.

    Returns:
        ``path``.

    Raises:
        TypeError: config or rng_state is not JSON-serialisable (nothing is written).
    """
    arrays = {f"param/{k}": v for k, v in _params_dict(params).items()}
    opt_state = optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer
    opt_arrays: dict[str, np.ndarray] = {}
    opt_meta = None if opt_state is None else _split_arrays(opt_state, "optim", opt_arrays)
    arrays.update(opt_arrays)
    if isinstance(rng_state, np.random.Generator):
        rng_state = rng_state.bit_generator.state
    meta = {"format": FORMAT, "version": VERSION, "iteration": int(iteration),
            "config": config if config is not None else {}, "rng_state": rng_state,
            "optimizer": opt_meta}
    try:
        meta_bytes = json.dumps(meta).encode("utf-8")
    except TypeError as e:
        raise TypeError(f"save_checkpoint({path}): config/rng_state must be JSON-serialisable "
                        f"({e})") from None
    arrays[META_KEY] = np.frombuffer(meta_bytes, dtype=np.uint8)

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def load_checkpoint(path: str, model=None, optimizer=None) -> Checkpoint:
    """Read a checkpoint (``allow_pickle=False``); optionally restore it into objects.

    Args:
        path: a file written by :func:`save_checkpoint`.
        model: if given, a Module whose parameters are set from the file (strict: names and
            shapes must match).
        optimizer: if given, an object with ``load_state_dict`` that receives the optimiser
            state.

    Returns:
        :class:`Checkpoint`.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: truncated/corrupt archive, not a minimaskrcnn checkpoint, unsupported
            version, or an array that cannot be read (the message names the path).
        KeyError, ValueError: the checkpoint does not fit ``model``/``optimizer``.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if META_KEY not in npz.files:
                raise CheckpointError(f"{path} is not a minimaskrcnn checkpoint (no {META_KEY} "
                                      f"entry; entries: {npz.files[:5]})")
            arrays = {k: npz[k] for k in npz.files}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or not an .npz "
                              f"archive): {type(e).__name__}: {e}") from None
    try:
        meta = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: the {META_KEY} entry is not JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a minimaskrcnn checkpoint (format "
                              f"{meta.get('format') if isinstance(meta, dict) else meta!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {meta.get('version')} is not "
                              f"supported (expected {VERSION})")
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    try:
        opt_state = (None if meta.get("optimizer") is None
                     else _join_arrays(meta["optimizer"], arrays))
    except KeyError as e:
        raise CheckpointError(f"{path}: optimiser array {e} is missing") from None
    ckpt = Checkpoint(params=params, optimizer_state=opt_state, iteration=int(meta["iteration"]),
                      config=meta.get("config") or {}, rng_state=meta.get("rng_state"),
                      path=str(path))
    if model is not None:
        model.load_state_dict(params)
    if optimizer is not None and opt_state is not None:
        optimizer.load_state_dict(opt_state)
    return ckpt
