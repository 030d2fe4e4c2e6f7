"""Trained models by name or by file: the weights that ship with the package, and one
``load_model`` for them and for any checkpoint of ``minimaskrcnn train`` (Detectron2's
``model_zoo``; torchvision's ``weights=`` with ``weights.meta``).

    load_model("nuclei-mini-dsb2018")              a built MaskRCNN with the shipped weights
    load_model("runs/x/checkpoint_003000.npz")     the same from a checkpoint path
    load_model(name, return_config=True)           (model, Config)
    get_metadata(name_or_path)                     the classes (COCO ids, names) and keypoints
    list_weights()                                 {shipped name: its card}

A shipped weights file is ``minimaskrcnn/data/weights/<name>.npz`` (package data, beside its card
``<name>.md``: what the weights are, the command that trained them, their scores). It is a
checkpoint (:mod:`minimaskrcnn.checkpoint`) without optimiser state, whose ``config`` is the
configuration the weights were trained with; a bare archive of ``param/<name>`` arrays also
loads, built from the preset :data:`PRETRAINED` registers for its name.

Floor: above the model (it builds one) and the checkpoint format; below data, evaluation and
training (the command line's ``evaluate`` and ``predict`` load their ``--checkpoint`` here).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from minimaskrcnn.backend import device_module
from minimaskrcnn.checkpoint import (
    Checkpoint,
    CheckpointError,
    config_from_checkpoint,
    load_weights,
    restore,
)
from minimaskrcnn.config import Config, get_preset
from minimaskrcnn.model import MaskRCNN, build_model

__all__ = ["PRETRAINED", "WEIGHTS_DIR", "Metadata", "get_metadata", "list_weights", "load_model",
           "pretrained_path"]

WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "data", "weights")
"""Where the shipped weights live (package data)."""

PRETRAINED = {"nuclei-mini-dsb2018": "nuclei-mini", "nuclei-dsb2018": "nuclei",
              "lego-battery": "lego-battery"}
"""Shipped weights: ``{name: the preset they were trained as}``."""


class Metadata(NamedTuple):
    """What a model's labels and keypoints mean (torchvision's ``weights.meta``, Detectron2's
    ``MetadataCatalog``), from the ``dataset`` section a checkpoint stores.

    Attributes:
        category_ids: ``(K,)`` the COCO category id of each label: label ``k`` (1..K) is
            ``category_ids[k - 1]``; ``[1, ..., K]`` for a file that stores none.
        class_names: ``(K,)`` the category names (the ids as strings for a file without).
        keypoint_names: the keypoint names of a keypoint model's training data, else ``[]``.
        skeleton: ``[(a, b)]`` 1-based keypoint index pairs to draw as lines, else ``[]``.
    """

    category_ids: list[int]
    class_names: list[str]
    keypoint_names: list[str]
    skeleton: list[tuple[int, int]]


def pretrained_path(name_or_path: str) -> str:
    """The file of the shipped weights ``name_or_path`` (``"nuclei-mini-dsb2018"``), or
    ``name_or_path`` itself when it is a path: it ends in ``.npz``, holds a directory
    separator, or names an existing file.

    Raises:
        ValueError: neither a shipped name nor a path (the message lists the shipped names).
    """
    if name_or_path in PRETRAINED:
        return os.path.join(WEIGHTS_DIR, f"{name_or_path}.npz")
    if name_or_path.endswith(".npz") or os.sep in name_or_path or os.path.isfile(name_or_path):
        return name_or_path
    raise ValueError(f"unknown pretrained weights {name_or_path!r}: neither a shipped name "
                     f"({', '.join(PRETRAINED)}) nor a checkpoint file")


def _read(name_or_path: str) -> tuple[Checkpoint, Config]:
    """The checkpoint of ``name_or_path`` and its Config (stored, or the registered preset of a
    bare shipped archive)."""
    path = pretrained_path(name_or_path)
    if not os.path.isfile(path):
        if name_or_path in PRETRAINED:
            raise FileNotFoundError(
                f"pretrained weights {path} do not exist (the package ships {name_or_path!r} in "
                f"{WEIGHTS_DIR}; reinstall it, or train one with `minimaskrcnn train` and pass "
                "the checkpoint's path)")
        raise FileNotFoundError(f"{path}: checkpoint not found")
    ckpt = load_weights(path)
    if ckpt.config:
        return ckpt, config_from_checkpoint(ckpt)
    preset = PRETRAINED.get(os.path.splitext(os.path.basename(path))[0])
    if preset is None:
        raise CheckpointError(f"{path} stores no config (a checkpoint's __meta__) and its name is "
                              f"not one of the shipped weights ({', '.join(PRETRAINED)})")
    return ckpt, get_preset(preset)


def load_model(name_or_path: str, device: str = "cpu", *, return_config: bool = False):
    """A :class:`~minimaskrcnn.model.MaskRCNN` built from the configuration the weights were
    trained with, the weights loaded (every parameter checked finite floating point, names and
    shapes strict).

    Args:
        name_or_path: a shipped name (:data:`PRETRAINED`, e.g. ``"nuclei-mini-dsb2018"``) or the
            path of a checkpoint (``minimaskrcnn train``'s ``checkpoint_*.npz``) or of a bare
            weights archive (:func:`~minimaskrcnn.checkpoint.load_weights`).
        device: ``"cpu"`` (NumPy, float32) or ``"cuda"`` (CuPy: the parameters are copied to the
            GPU).
        return_config: also return the :class:`~minimaskrcnn.config.Config`.

    Returns:
        the model in inference use (``model.predict``), or ``(model, config)``.

    Raises:
        ValueError: an unknown name (the message lists the shipped ones) or device.
        TierUnavailableError: ``device="cuda"`` without CuPy or a GPU (one line).
        FileNotFoundError: the file does not exist (the message names it).
        CheckpointError (a ValueError): not a readable minimaskrcnn checkpoint or weights
            archive, a bad stored config, or parameters that do not fit the model (missing,
            unexpected, wrong shape) or are not finite floating point; one line naming the file.
    """
    xp = device_module(device)  # one line without a GPU, before reading anything
    ckpt, cfg = _read(name_or_path)
    model: MaskRCNN = build_model(cfg, np.random.default_rng(0))
    restore(ckpt, model)
    if xp is not np:
        model.to(xp)  # a checkpoint (NumPy arrays) loads on either device
    return (model, cfg) if return_config else model


def get_metadata(name_or_path: str) -> Metadata:
    """The meaning of a model's labels and keypoints (:class:`Metadata`), from the ``dataset``
    section its checkpoint stores (``minimaskrcnn train`` writes it); labels ``1..K`` when there
    is none.

    Raises:
        as :func:`load_model` for the name and the file; CheckpointError: the stored category ids
        are not one per class of the model.
    """
    ckpt, cfg = _read(name_or_path)
    ds = ckpt.config.get("dataset") or {}
    k = cfg.model.num_classes
    category_ids = [int(c) for c in ds.get("category_ids") or range(1, k + 1)]
    if len(category_ids) != k:
        raise CheckpointError(f"{ckpt.path}: config.dataset.category_ids has {len(category_ids)} "
                              f"ids, config.model.num_classes is {k}")
    class_names = list(ds.get("class_names") or [str(c) for c in category_ids])
    try:
        skeleton = [(int(a), int(b)) for a, b in ds.get("skeleton") or []]
    except (TypeError, ValueError):
        raise CheckpointError(f"{ckpt.path}: config.dataset.skeleton must be pairs of keypoint "
                              f"numbers, got {ds.get('skeleton')!r:.60}") from None
    return Metadata(category_ids, class_names, list(ds.get("keypoint_names") or []), skeleton)


def list_weights() -> dict[str, str]:
    """``{shipped name: its card}``: the Markdown beside each weights file (``<name>.md``: what
    the weights are, the command that trained them, their scores); ``""`` where the card is
    missing."""
    cards = {}
    for name in PRETRAINED:
        card = os.path.join(WEIGHTS_DIR, f"{name}.md")
        try:
            with open(card, encoding="utf-8") as f:
                cards[name] = f.read()
        except FileNotFoundError:
            cards[name] = ""
    return cards
