"""Trained weights that ship with the package: ``load_pretrained(name)`` -> a built MaskRCNN.

A weights file is ``minimaskrcnn/data/weights/<name>.npz``, a NumPy archive read with
``allow_pickle=False``:

- ``param/<dotted name>``: one array per parameter (float32), the names of
  ``MaskRCNN.named_parameters()``;
- ``__meta__`` (optional): the UTF-8 JSON metadata of a checkpoint
  (:mod:`minimaskrcnn.training.checkpoint`), whose ``config`` is the configuration the weights
  were trained with. Without it the model is built from the preset registered for the name in
  :data:`PRETRAINED`.

The training command that made a file is written beside it (``<name>.md``).
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")
"""Where the shipped weights live."""

PRETRAINED = {"nuclei-mini-dsb2018": "nuclei-mini"}
"""Shipped weights: ``{name: the preset they were trained as}``."""

_META_KEY = "__meta__"
_PREFIX = "param/"


class PretrainedError(ValueError):
    """A weights file that cannot be read or does not fit its model (the message names it)."""


def pretrained_path(name: str) -> str:
    """The file of the shipped weights ``name`` (``"nuclei-mini-dsb2018"``), or ``name`` itself
    when it is a path to an ``.npz`` file.

    Raises:
        ValueError: an unknown name (the message lists the shipped ones).
    """
    if name.endswith(".npz") or os.sep in name:
        return name
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained weights {name!r}; shipped: {', '.join(PRETRAINED)}")
    return os.path.join(WEIGHTS_DIR, f"{name}.npz")


def _read(path: str) -> tuple[dict, dict | None]:
    """``({param name: array}, metadata dict or None)`` of a weights file."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as e:
        raise PretrainedError(f"{path} is not a readable weights file (.npz): "
                              f"{type(e).__name__}: {e}") from None
    meta = None
    if _META_KEY in arrays:
        try:
            meta = json.loads(arrays.pop(_META_KEY).tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PretrainedError(f"{path}: the {_META_KEY} entry is not JSON ({e})") from None
        if not isinstance(meta, dict):
            raise PretrainedError(f"{path}: the {_META_KEY} entry is not a JSON object")
    params = {k[len(_PREFIX):]: v for k, v in arrays.items() if k.startswith(_PREFIX)}
    if not params:
        raise PretrainedError(f"{path} holds no parameters (no '{_PREFIX}<name>' entries; "
                              f"entries: {sorted(arrays)[:5]})")
    return params, meta


def _config(path: str, name: str, meta: dict | None):
    from minimaskrcnn.config import get_preset

    if meta is not None and meta.get("config"):
        from minimaskrcnn.training.checkpoint import Checkpoint, config_from_checkpoint

        try:
            return config_from_checkpoint(Checkpoint(params={}, optimizer_state=None, iteration=0,
                                                     config=meta["config"], path=path))
        except ValueError as e:  # CheckpointError names the file already
            raise PretrainedError(str(e)) from None
    preset = PRETRAINED.get(os.path.splitext(os.path.basename(name))[0])
    if preset is None:
        raise PretrainedError(f"{path} stores no config ({_META_KEY}) and its name is not one "
                              f"of the shipped weights ({', '.join(PRETRAINED)})")
    return get_preset(preset)


def load_pretrained(name: str = "nuclei-mini-dsb2018", *, return_config: bool = False):
    """A MaskRCNN built from the configuration the weights were trained with, weights loaded.

    Args:
        name: a shipped weights name (:data:`PRETRAINED`) or the path of an ``.npz`` file of
            the same layout (a checkpoint of ``minimaskrcnn train`` works too).
        return_config: also return the :class:`~minimaskrcnn.config.Config`.

    Returns:
        the model (on the CPU, float32), or ``(model, config)``.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: an unknown name; :class:`PretrainedError` for a file that is not a readable
            weights archive, stores a bad config, or whose parameters do not fit the model
            (missing, unexpected, wrong shape, not finite floating point).
    """
    from minimaskrcnn.model import build_model

    path = pretrained_path(name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained weights {path} do not exist" + (
            f" (the package ships {name!r} in {WEIGHTS_DIR}; reinstall it, or train one with "
            f"`minimaskrcnn train` and pass the checkpoint's path)" if name in PRETRAINED else ""))
    params, meta = _read(path)
    cfg = _config(path, name, meta)
    for pname, value in params.items():
        if value.dtype.kind != "f" or not np.isfinite(value).all():
            raise PretrainedError(f"{path}: parameter {pname} is not finite floating point")
    model = build_model(cfg, np.random.default_rng(0))
    try:
        model.load_state_dict(params)
    except (KeyError, ValueError, TypeError) as e:
        raise PretrainedError(f"{path} does not fit the {cfg.name} model: {e}") from None
    return (model, cfg) if return_config else model
