"""Checkpoints: parameters, optimiser state, iteration, config and RNG state in one ``.npz`` (the
file format, on its own floor: it needs the configuration and the backend, not the model).

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

Writes are atomic (:mod:`minimaskrcnn._atomic`): the archive goes to a temporary file
``.tmp-<name>-<random>`` in the target's directory, is flushed and fsync'ed, given the
permissions of any new file (``0666`` less the umask, so ``0644`` usually, like the run's other
files), then ``os.replace``'d over the target, so a crash never leaves a half-written checkpoint
under the final name; a temporary file left by a killed write is removed by
:func:`remove_temporary_files`. Reading checks the format marker, every array and the metadata
(iteration, and the ``config`` as a :class:`~minimaskrcnn.config.Config`: types and ranges of
every field), so a truncated, corrupt, foreign or edited file raises :class:`CheckpointError`,
one line naming the path and the problem. Restoring into a model or optimiser also refuses
parameters or momentum buffers that are not real floating point or not finite. Arrays
round-trip bit-exactly.

:func:`load_weights` also reads a bare weights archive (``param/<name>`` entries without
``__meta__``). Building a model from a file is one floor up, in
:func:`minimaskrcnn.model_zoo.load_model` (Detectron2's ``DetectionCheckpointer`` beside its
``model_zoo``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from minimaskrcnn._atomic import TMP_PREFIX, open_atomic, temporary_files
from minimaskrcnn.backend import to_numpy
from minimaskrcnn.config import Config, EvalConfig, ModelConfig, TrainConfig, config_from_dict

FORMAT = "minimaskrcnn-checkpoint"
VERSION = 1
META_KEY = "__meta__"
PARAM_PREFIX = "param/"
"""Parameter arrays are stored as ``param/<dotted name>``."""

__all__ = [
    "FORMAT", "MAX_CHECKPOINT_BYTES", "META_KEY", "PARAM_PREFIX", "TMP_PREFIX", "VERSION", "Checkpoint", "CheckpointError",
    "config_from_checkpoint", "generator_from_state", "load_checkpoint", "load_weights",
    "remove_temporary_files", "restore", "save_checkpoint",
]


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
    arrays = {PARAM_PREFIX + k: v for k, v in _params_dict(params).items()}
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
    with open_atomic(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def remove_temporary_files(directory: str) -> list[str]:
    """Remove the temporary files that killed :func:`save_checkpoint` calls left in
    ``directory`` (``.tmp-*.npz-*``). Only call it while no other process writes checkpoints
    there (the training loop holds the run folder's lock).

    Returns:
        the paths removed.
    """
    removed = []
    for path in temporary_files(directory):
        if ".npz-" in os.path.basename(path)[len(TMP_PREFIX):]:
            try:
                os.remove(path)
                removed.append(path)
            except FileNotFoundError:
                pass
    return removed


# --------------------------------------------------------------------------------------------
# Checks of what a file holds
# --------------------------------------------------------------------------------------------

_UNIT_INTERVAL_SUFFIXES = ("_thresh", "_threshold", "_fraction", "_prob")
_UNIT_INTERVAL = {"warmup_factor", "momentum"}
_ANY_INT = {"box_sampling_ratio", "mask_sampling_ratio", "canonical_level"}
"""Integer fields with no range (a sampling ratio <= 0 means adaptive)."""
_NON_NEGATIVE_INT = {"mask_head_convs", "seed", "warmup_iters", "milestones", "num_keypoints", "dsb_min_area",
                     "keypoint_head_convs"}
"""Integer fields that may be 0 (``num_keypoints = 0``: no keypoint head)."""
_POSITIVE_FLOAT = {"base_lr", "gamma", "bbox_xform_clip", "box_coder_weights", "aspect_ratios",
                   "anchor_octave_scales", "scale_jitter", "gamma_jitter", "channel_gain_jitter"}
_MAX_INT = {"stem_channels": 4096, "fpn_channels": 4096, "representation_size": 16384,
            "mask_head_channels": 4096, "keypoint_head_channels": 4096, "num_classes": 100_000,
            "num_keypoints": 1024, "mask_head_convs": 64, "keypoint_head_convs": 64,
            "box_roi_size": 256, "mask_roi_size": 256, "keypoint_roi_size": 256,
            "mask_size": 1024, "keypoint_heatmap_size": 1024}
"""Upper bounds of the fields that size the network's arrays, far above every preset (64
FPN channels): a crafted config cannot make the model allocate gigabytes before its parameters
are compared with the file's (issue 27: ``fpn_channels`` huge took 7.6 GB)."""
MAX_CHECKPOINT_BYTES = 1 << 30
"""The most bytes the arrays of a checkpoint may hold once read (1 GiB; nuclei-mini's weights are
10 MB, a checkpoint with momentum 20 MB). Checked from the archive's directory and every array's
header before anything is read, so a zip bomb or a header claiming terabytes is refused without
allocating."""


def _check_value(where: str, name: str, value, default) -> None:
    """Type and range of one config field, judged by its default's type and its name."""
    def fail(what):
        raise CheckpointError(f"{where}.{name} {what}, got {value!r:.60}")

    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            fail("must be a list")
        for v in value:
            _check_value(where, name, v, default[0] if default else 0.0)
        return
    if isinstance(default, bool):
        if not isinstance(value, bool):
            fail("must be true or false")
        return
    if isinstance(default, str):
        if not isinstance(value, str):
            fail("must be a string")
        return
    if isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            fail("must be an integer")
        if name in _MAX_INT and value > _MAX_INT[name]:
            fail(f"must be <= {_MAX_INT[name]}")
        if name in _ANY_INT:
            return
        low = 0 if name in _NON_NEGATIVE_INT else 1
        if value < low:
            fail(f"must be >= {low}")
        return
    if isinstance(default, float):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            fail("must be a number")
        if not math.isfinite(value):
            fail("must be finite")
        if name.endswith(_UNIT_INTERVAL_SUFFIXES) or name in _UNIT_INTERVAL:
            if not 0 <= value <= 1:
                fail("must be in [0, 1]")
        elif name in _POSITIVE_FLOAT:
            if not value > 0:
                fail("must be > 0")
        elif value < 0:
            fail("must be >= 0")


def config_from_checkpoint(ckpt: Checkpoint) -> Config:
    """The :class:`~minimaskrcnn.config.Config` a checkpoint stores, checked field by field.

    Checks every field of ``model``, ``train`` and ``eval`` against the type of its default
    (integers, finite numbers, lists, strings) and a range (sizes and counts >= 1, thresholds
    and fractions in [0, 1], rates > 0), then builds the Config with
    :func:`~minimaskrcnn.config.config_from_dict`; and, when present, ``dataset``:
    ``category_ids`` (distinct integers) and ``class_names`` (strings, as many).

    Raises:
        CheckpointError: one line naming the file and the field.
    """
    path, d = ckpt.path, ckpt.config
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: config must be an object, got {d!r:.60}")
    for section, cls in (("model", ModelConfig), ("train", TrainConfig), ("eval", EvalConfig)):
        values = d.get(section, {})
        if not isinstance(values, dict):
            raise CheckpointError(f"{path}: config.{section} must be an object, got {values!r:.60}")
        defaults = cls()
        names = {f.name for f in dataclasses.fields(cls)}
        for name, value in values.items():
            if name in names:
                _check_value(f"{path}: config.{section}", name, value, getattr(defaults, name))
    if not isinstance(d.get("name", ""), str):
        raise CheckpointError(f"{path}: config.name must be a string, got {d['name']!r:.60}")
    try:
        cfg = config_from_dict(d)
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        raise CheckpointError(f"{path}: config: {e}") from None
    if not isinstance(cfg, Config):  # pragma: no cover - config_from_dict's contract
        raise CheckpointError(f"{path}: config is not a Config")
    ds = d.get("dataset")
    if ds is not None:
        ids, names = (ds.get("category_ids"), ds.get("class_names")) if isinstance(ds, dict) else (None, None)
        if not (isinstance(ids, list) and ids and len(set(map(repr, ids))) == len(ids)
                and all(isinstance(c, int) and not isinstance(c, bool) for c in ids)):
            raise CheckpointError(f"{path}: config.dataset.category_ids must be distinct "
                                  f"integers, got {ids!r:.60}")
        if not (isinstance(names, list) and len(names) == len(ids)
                and all(isinstance(n, str) for n in names)):
            raise CheckpointError(f"{path}: config.dataset.class_names must be {len(ids)} strings "
                                  f"(one per category id), got {names!r:.60}")
    return cfg


def _check_array(path: str, what: str, value) -> None:
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        dtype = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        raise CheckpointError(f"{path}: {what} is stored as {dtype}, not floating point")
    if not np.isfinite(value).all():
        raise CheckpointError(f"{path}: {what} has {int((~np.isfinite(value)).sum())} non-finite "
                              f"values")


def _check_optimizer_state(path: str, state) -> None:
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: optimiser state must be an object, got {state!r:.60}")
    for key in ("lr", "momentum", "weight_decay"):
        v = state.get(key)
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                and v >= 0):
            raise CheckpointError(f"{path}: optimiser {key} must be a finite number >= 0, "
                                  f"got {v!r:.60}")
    steps = state.get("steps", 0)
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0):
        raise CheckpointError(f"{path}: optimiser steps must be an integer >= 0, got {steps!r:.60}")
    buffers = state.get("buffers", {})
    if not isinstance(buffers, dict):
        raise CheckpointError(f"{path}: optimiser buffers must be an object")
    for name, value in buffers.items():
        _check_array(path, f"momentum buffer {name}", value)


def restore(ckpt: Checkpoint, model=None, optimizer=None, *,
            upgrade_names: Callable[[dict], dict] | None = None) -> None:
    """Set a model's parameters and an optimiser's state from a checkpoint, after checking that
    every parameter and momentum buffer is a finite real floating-point array.

    Args:
        ckpt: what :func:`load_checkpoint` or :func:`load_weights` read.
        model: a Module with ``load_state_dict`` (strict: names and shapes must match), or None.
        optimizer: an object with ``load_state_dict`` (:class:`~minimaskrcnn.training.optim.SGD`)
            that receives the stored optimiser state, or None.
        upgrade_names: maps a ``{name: array}`` dict written under an older model's parameter
            names to today's (the model's own, e.g. :func:`minimaskrcnn.model.upgrade_state_names`
            for checkpoints written before the five-stage layout: ``rpn_head.*``,
            ``roi_heads.*``); applied to the parameters and to the momentum buffers, which are
            keyed by parameter name. The file format does not know the model's names, so the
            caller who knows the model passes it (the training loop's resume does).

    Raises:
        CheckpointError: a bad array, or a checkpoint that does not fit the model/optimiser
            (missing, unexpected or differently shaped parameters); names the file.
    """
    path = ckpt.path
    rename = upgrade_names if upgrade_names is not None else dict
    if model is not None:
        for name, value in ckpt.params.items():
            _check_array(path, f"parameter {name}", value)
        try:
            model.load_state_dict(rename(ckpt.params))
        except (KeyError, ValueError, TypeError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise CheckpointError(f"{path} does not fit the model: {msg}") from None
    if optimizer is not None and ckpt.optimizer_state is not None:
        _check_optimizer_state(path, ckpt.optimizer_state)
        state = dict(ckpt.optimizer_state)
        state["buffers"] = rename(state.get("buffers", {}))
        try:
            optimizer.load_state_dict(state)
        except (KeyError, ValueError, TypeError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            raise CheckpointError(f"{path} does not fit the optimiser: {msg}") from None


def _read_arrays(path: str) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive (``allow_pickle=False``).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: truncated, corrupt or not an ``.npz`` archive.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # np.load would return a .npy's array, not an archive
        raise CheckpointError(f"{path} is not an .npz archive (a .npy array, or another kind of "
                              "file?); a checkpoint is the .npz file `minimaskrcnn train` writes")
    _check_sizes(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or not an .npz "
                              f"archive): {type(e).__name__}: {e}") from None


def _check_sizes(path: str) -> None:
    """Refuse, before reading any array, an archive whose members hold more than
    :data:`MAX_CHECKPOINT_BYTES` once decompressed, or a member whose array header claims more
    bytes than the member holds.

    Raises:
        CheckpointError: naming the path (and the member).
    """
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            total = sum(i.file_size for i in infos)
            if total > MAX_CHECKPOINT_BYTES:
                raise CheckpointError(f"{path}: its arrays would take {total} bytes, more than a "
                                      f"checkpoint may ({MAX_CHECKPOINT_BYTES}); not read")
            for info in infos:
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(f)
                    header = f.tell()
                claimed = math.prod(shape) * dtype.itemsize
                if claimed > info.file_size - header:
                    raise CheckpointError(
                        f"{path}: array {info.filename} claims {claimed} bytes (shape "
                        f"{shape!r:.80}) but holds {info.file_size - header}; not read")
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (truncated or not an .npz "
                              f"archive): {type(e).__name__}: {e}") from None


def _checkpoint(path: str, arrays: dict[str, np.ndarray]) -> Checkpoint:
    """The :class:`Checkpoint` of an archive holding ``__meta__`` (checked, see
    :func:`load_checkpoint`)."""
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
    params = {k[len(PARAM_PREFIX):]: v for k, v in arrays.items() if k.startswith(PARAM_PREFIX)}
    try:
        opt_state = (None if meta.get("optimizer") is None
                     else _join_arrays(meta["optimizer"], arrays))
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: optimiser array {e} is missing") from None
    iteration = meta.get("iteration")
    if not (isinstance(iteration, int) and not isinstance(iteration, bool) and iteration >= 0):
        raise CheckpointError(f"{path}: the iteration must be an integer >= 0, got "
                              f"{iteration!r:.60}")
    config = meta.get("config")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: config must be an object, got {config!r:.60}")
    ckpt = Checkpoint(params=params, optimizer_state=opt_state, iteration=iteration,
                      config=config, rng_state=meta.get("rng_state"), path=str(path))
    if any(k in config for k in ("model", "train", "eval")):
        config_from_checkpoint(ckpt)
    return ckpt


def load_checkpoint(path: str, model=None, optimizer=None, *,
                    upgrade_names: Callable[[dict], dict] | None = None) -> Checkpoint:
    """Read a checkpoint (``allow_pickle=False``); optionally restore it into objects.

    Args:
        path: a file written by :func:`save_checkpoint`.
        model: if given, a Module whose parameters are set from the file (strict: names and
            shapes must match; see :func:`restore`).
        optimizer: if given, an object with ``load_state_dict`` that receives the optimiser
            state.
        upgrade_names: see :func:`restore` (older files' parameter names).

    Returns:
        :class:`Checkpoint`.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError (a ValueError): truncated/corrupt archive, not a minimaskrcnn
            checkpoint, unsupported version, an array that cannot be read, a bad iteration or
            config (when the config has ``model``/``train``/``eval`` sections:
            :func:`config_from_checkpoint`), or, with ``model``/``optimizer``, a parameter or
            buffer that is not finite floating point or does not fit (the message names the
            path).
    """
    arrays = _read_arrays(path)
    if META_KEY not in arrays:
        raise CheckpointError(f"{path} is not a minimaskrcnn checkpoint (no {META_KEY} "
                              f"entry; entries: {sorted(arrays)[:5]})")
    ckpt = _checkpoint(path, arrays)
    restore(ckpt, model, optimizer, upgrade_names=upgrade_names)
    return ckpt


def load_weights(path: str) -> Checkpoint:
    """Read a checkpoint, or a bare weights archive: ``param/<dotted name>`` arrays and no
    ``__meta__`` (weights published without their training metadata). Restores nothing.

    Returns:
        :class:`Checkpoint`; for a bare archive ``config`` is ``{}``, ``iteration`` 0 and
        ``optimizer_state`` None.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: as :func:`load_checkpoint`, or an archive with neither ``__meta__``
            nor parameters (the message lists its first entries).
    """
    arrays = _read_arrays(path)
    if META_KEY in arrays:
        return _checkpoint(path, arrays)
    params = {k[len(PARAM_PREFIX):]: v for k, v in arrays.items() if k.startswith(PARAM_PREFIX)}
    if not params:
        raise CheckpointError(f"{path} is neither a minimaskrcnn checkpoint nor a weights file "
                              f"(no {META_KEY} entry and no parameters '{PARAM_PREFIX}<name>'; "
                              f"entries: {sorted(arrays)[:5]})")
    return Checkpoint(params=params, optimizer_state=None, iteration=0, path=str(path))
