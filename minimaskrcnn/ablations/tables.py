"""The paper's ablation tables as data: tables of arms, the sweeps' schedules, and the config of
a run.

A *table* (``"2b"``, ``"2c"``, ``"2d"``, ``"2e"``, ``"3"``, ``"5"``, ``"6"``: :data:`TABLES`) is a
list of *arms*; an arm (:class:`Arm`) is nothing but a named set of config overrides
(``{"model.roi_op": "pool", ...}``, :func:`minimaskrcnn.config.apply_overrides`) plus a data set
choice and the paper's row. A table also names the metrics its report shows (Table 2's mask,
box and DSB columns; box AP for Table 3; box, mask and keypoint AP for Table 5; keypoint AP for
Table 6). A :class:`Schedule` cuts the preset's schedule to a sweep's length
(:func:`minimaskrcnn.config.shorten_schedule`); :func:`arm_config` is the Config one run trains.

The paper's numbers (``Arm.paper``) are COCO AP in points, copied from the paper's Tables 2, 3, 5
and 6 (He et al., "Mask R-CNN", ICCV 2017 / arXiv:1703.06870) and checked against its text.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from minimaskrcnn.config import Config, apply_overrides, get_preset, shorten_schedule
from minimaskrcnn.data.keypoint_shapes import keypoint_shapes_dataset
from minimaskrcnn.data.shapes import shapes_dataset

__all__ = ["KEYPOINT_SHAPES_DATA", "SCHEDULES", "SHAPES_DATA", "TABLE2_METRICS", "TABLES", "Arm",
           "Schedule", "Table", "arm_config", "generated_data", "generated_datasets",
           "get_schedule", "get_table", "keypoint_shapes_datasets", "select_arms",
           "shapes_datasets"]

Metric = tuple[str, "str | None"]
"""``(key, subkey)`` into ``evaluate_model``'s metrics: ``("segm", "AP")``, ``("bbox", "AP75")``,
``("keypoints", "AP50")``, ``("dsb_score", None)``."""

TABLE2_METRICS: tuple[Metric, ...] = (
    ("segm", "AP"), ("segm", "AP50"), ("segm", "AP75"),
    ("bbox", "AP"), ("bbox", "AP50"), ("bbox", "AP75"), ("dsb_score", None))
"""The columns of Table 2's reports: mask AP / AP50 / AP75, box AP / AP50 / AP75, DSB score."""

_BOX = (("bbox", "AP"), ("bbox", "AP50"), ("bbox", "AP75"))
_MASK = (("segm", "AP"), ("segm", "AP50"), ("segm", "AP75"))
_KP = (("keypoints", "AP"), ("keypoints", "AP50"), ("keypoints", "AP75"))


@dataclass(frozen=True)
class Arm:
    """One row of an ablation table.

    Attributes:
        name: folder name and identifier (``"warp_max"``).
        label: the row's label in the report (``"RoIWarp, max"``).
        overrides: ``{"model.<field>" | "train.<field>" | "eval.<field>": value}`` applied to
            the sweep's base config (:func:`apply_overrides`).
        dataset: ``"coco"`` (the COCO files the sweep is given: the DSB2018 nuclei),
            ``"shapes"`` (the generated multi-class shapes of :func:`shapes_datasets`, for 2b) or
            ``"keypoint_shapes"`` (the generated keypoint triangles of
            :func:`keypoint_shapes_datasets`, for 5 and 6). The caller passes the data sets to
            :func:`run_sweep` (:func:`generated_datasets` makes the generated ones).
        paper: the paper's row in AP points: ``{"segm": (AP, AP50, AP75)}`` and, where the paper
            gives them, ``"bbox"`` and ``"keypoints"``; a tuple of one, ``(AP,)``, where the
            paper gives AP only (Tables 3 and 5); ``None`` for a row the paper does not have.
        unavailable: why the arm cannot run yet; ``None`` if it can.
        same_as: ``(table, arm)`` of another table's arm that trains exactly this config (2e's
            FCN row and Table 3's Mask R-CNN row are 2c's RoIAlign row; Table 6's RoIAlign row
            is Table 5's keypoint-only row): the sweep runs (or skips) that run, in that arm's
            folder, and the report shows its results in both tables.
    """

    name: str
    label: str
    overrides: Mapping[str, object]
    dataset: str = "coco"
    paper: Mapping[str, tuple[float, float, float]] | None = None
    unavailable: str | None = None
    same_as: tuple[str, str] | None = None


@dataclass(frozen=True)
class Table:
    """One of the paper's ablation tables (a Table 2 sub-table, Table 3, 5 or 6), as arms.

    Attributes:
        name: ``"2c"``, ``"3"`` ...; title: what it compares; paper_setting: the paper's backbone
        and data; ours: what our rows train (preset, data); reference: the arm the deltas are
        taken against; arms: the rows, in the paper's order; schedule: the name of the table's
        schedule in :data:`SCHEDULES` (``"short"`` on the nuclei, ``"shapes"`` for 2b,
        ``"keypoints"`` for 5 and 6); preset: the network the arms change (``"nuclei-mini"``,
        ``"shapes-mini"`` for 2b, ``"keypoints-mini"`` for 5 and 6).
        run_seconds: seconds of one of the table's runs (training and evaluation, 2 MPI ranks on
            the 2-core machine) where its network costs other than the schedule's estimate
            (``Schedule.run_seconds``); ``None``: the schedule's.
        metrics: the report's columns (:data:`TABLE2_METRICS` for Table 2); an arm whose network
            has no such head (no mask head: no mask AP, no DSB score) shows ``-`` there.
        primary: the metric of the report's min-max and delta columns (mask AP for Table 2).
        rank_by: the metrics the report ranks the arms by (each among the arms that have it);
            empty: ``primary`` alone.
        paper_keys: which of the paper's numbers (``Arm.paper`` keys) the report shows beside
            ours, one column each.
        cost_note: how the cost estimate was obtained where it is not a measured 2-rank run
            (:func:`~minimaskrcnn.ablations.describe` prints it).
    """

    name: str
    title: str
    paper_setting: str
    ours: str
    reference: str
    arms: tuple[Arm, ...] = field(default_factory=tuple)
    schedule: str = "short"
    preset: str = "nuclei-mini"
    run_seconds: float | None = None
    metrics: tuple[Metric, ...] = TABLE2_METRICS
    primary: Metric = ("segm", "AP")
    rank_by: tuple[Metric, ...] = ()
    paper_keys: tuple[str, ...] = ("segm", "bbox")
    cost_note: str | None = None

    @property
    def dataset(self) -> str:
        """The arms' data set (``Arm.dataset``: ``"coco"``, ``"shapes"``, ``"keypoint_shapes"``;
        every arm of a table trains on the same)."""
        return self.arms[0].dataset if self.arms else "coco"

    def arm(self, name: str) -> Arm:
        """The arm called ``name``. Raises ValueError (listing the arms) for another name."""
        for a in self.arms:
            if a.name == name:
                return a
        raise ValueError(f"table {self.name} has no arm {name!r}; arms: "
                         f"{', '.join(a.name for a in self.arms)}")


def _roi(op: str, aligned: bool = False) -> dict:
    return {"model.roi_op": op, "model.roi_aligned": aligned}


_C5 = {"model.features": "c5", "model.image_scale": 4.0,
       "model.anchor_sizes": (32, 64, 128, 256, 512)}
"""Table 2d's network: one stride-32 map (``features="c5"``) on the nuclei upscaled 4x
(``image_scale``: a median nucleus of 20 pixels becomes 80, two to three stride-32 cells, as
COCO's objects are on the paper's C5 network; at native size most nuclei are under half a cell
and the C5 network detects almost none), the anchors scaled with the images (8-128 -> 32-512,
the paper's C4 / C5 anchor sizes)."""
_MLP_DIMS = (256, 256)
"""The MLP mask head's hidden widths: the paper's fc 1024-1024, scaled as our FCN's 64 channels
scale its 256."""

TABLES: dict[str, Table] = {
    "2b": Table(
        "2b", "Multinomial vs. independent masks (and class-agnostic masks)",
        "ResNet-50-C4, COCO", "shapes-mini on the generated shapes (3 classes, shapes that "
        "occlude each other)", "sigmoid",
        (Arm("softmax", "softmax across classes", {"model.mask_loss": "softmax"}, "shapes",
             {"segm": (24.8, 44.1, 25.1)}),
         Arm("sigmoid", "per-class sigmoid (the default)", {"model.mask_loss": "sigmoid"},
             "shapes", {"segm": (30.3, 51.2, 31.5)}),
         # the paper gives class-agnostic masks in its text only: 29.7 mask AP
         Arm("agnostic", "class-agnostic sigmoid", {"model.mask_class_agnostic": True},
             "shapes", {"segm": (29.7, math.nan, math.nan)})),
        schedule="shapes", preset="shapes-mini"),
    "2c": Table(
        "2c", "RoI op: RoIPool, RoIWarp, RoIAlign",
        "ResNet-50-C4 (stride 16), COCO", "nuclei-mini (ResNet-GN + FPN, strides 4-32) on the "
        "DSB2018 nuclei (one class)", "align",
        (Arm("pool", "RoIPool (max)", _roi("pool"), paper={"segm": (26.9, 48.8, 26.4)}),
         Arm("warp_max", "RoIWarp, max", _roi("warp_max"), paper={"segm": (27.2, 49.2, 27.1)}),
         Arm("warp_avg", "RoIWarp, avg", _roi("warp_avg"), paper={"segm": (27.1, 48.9, 27.1)}),
         Arm("align_max", "RoIAlign, max", _roi("align_max"),
             paper={"segm": (30.2, 51.0, 31.8)}),
         Arm("align", "RoIAlign, avg", _roi("align"), paper={"segm": (30.3, 51.2, 31.5)}),
         Arm("align_aligned", "RoIAlign, avg, aligned=True (extra row)", _roi("align", True)))),
    "2d": Table(
        "2d", "RoI op with large-stride features: RoIPool vs. RoIAlign",
        "ResNet-50-C5 (stride 32), COCO", "nuclei-mini with features='c5' (one stride-32 map "
        "from C5, no FPN, every anchor size on it) on the DSB2018 nuclei upscaled 4x "
        "(image_scale=4, anchors 32-512)", "align",
        (Arm("pool", "RoIPool", {**_C5, **_roi("pool")},
             paper={"segm": (23.6, 46.5, 21.6), "bbox": (28.2, 52.7, 26.9)}),
         Arm("align", "RoIAlign", {**_C5, **_roi("align")},
             paper={"segm": (30.9, 51.8, 32.1), "bbox": (34.0, 55.3, 36.4)})),
        run_seconds=600 * 0.40 + 110.0),  # 0.40 s/iteration (few nuclei a crop), 110 s eval
    "2e": Table(
        "2e", "Mask branch: MLP vs. FCN", "ResNet-50-FPN, COCO",
        "nuclei-mini on the DSB2018 nuclei; MLP widths 256 (the paper's 1024 / 4, as our FCN's "
        "64 channels are its 256 / 4)", "fcn",
        (Arm("mlp", "MLP, fc 256-256 (paper: 1024-1024)",
             {"model.mask_head_type": "mlp", "model.mask_mlp_dims": _MLP_DIMS},
             paper={"segm": (31.5, 53.7, 32.8)}),
         Arm("mlp3", "MLP, fc 256-256-256 (paper: 1024 x 3)",
             {"model.mask_head_type": "mlp", "model.mask_mlp_dims": _MLP_DIMS + (256,)},
             paper={"segm": (31.5, 54.0, 32.6)}),
         Arm("fcn", "FCN (the default; = 2c's RoIAlign avg)", {},
             paper={"segm": (33.6, 55.2, 35.3)}, same_as=("2c", "align"))),
        run_seconds=600 * 0.41 + 56.0),  # the MLP arms: 0.41 s/iteration, 56 s eval
    "3": Table(
        "3", "Faster R-CNN with RoIPool, with RoIAlign, and Mask R-CNN: box AP",
        "ResNet-101-FPN, COCO test-dev", "nuclei-mini on the DSB2018 nuclei (one class), 2c's "
        "schedule; Faster R-CNN is the same network without its mask head (mask_on=False)",
        "align",
        (Arm("pool", "Faster R-CNN, RoIPool (no mask head)",
             {"model.mask_on": False, **_roi("pool")}, paper={"bbox": (36.2,)}),
         Arm("align", "Faster R-CNN, RoIAlign (no mask head)",
             {"model.mask_on": False, **_roi("align")}, paper={"bbox": (37.3,)}),
         Arm("mask", "Mask R-CNN: RoIAlign + mask head (= 2c's RoIAlign avg)", _roi("align"),
             paper={"bbox": (38.2,)}, same_as=("2c", "align"))),
        metrics=_BOX, primary=("bbox", "AP"), paper_keys=("bbox",),
        run_seconds=600 * 0.33 + 18.0),  # measured: 0.29-0.36 s/iteration, 15-23 s eval
    "5": Table(
        "5", "Multi-task learning: box, mask and keypoint heads",
        "ResNet-50-FPN, COCO minival, person category", "keypoints-mini on the generated "
        "keypoint triangles (one class, 3 keypoints, masks too); a head is off by mask_on=False "
        "/ num_keypoints=0", "box",
        (Arm("box", "Faster R-CNN (box only)",
             {"model.mask_on": False, "model.num_keypoints": 0}, "keypoint_shapes",
             {"bbox": (52.5,)}),
         Arm("mask", "mask only (Mask R-CNN)", {"model.num_keypoints": 0}, "keypoint_shapes",
             {"bbox": (53.6,), "segm": (45.8,)}),
         Arm("kp", "keypoint only (Keypoint R-CNN)", {"model.mask_on": False},
             "keypoint_shapes", {"bbox": (50.7,), "keypoints": (64.2,)}),
         Arm("kp_mask", "keypoint & mask (the preset)", {}, "keypoint_shapes",
             {"bbox": (52.0,), "segm": (45.1,), "keypoints": (64.7,)})),
        schedule="keypoints", preset="keypoints-mini", metrics=_BOX + _MASK + _KP,
        primary=("bbox", "AP"), rank_by=(("bbox", "AP"), ("segm", "AP"), ("keypoints", "AP")),
        paper_keys=("bbox", "segm", "keypoints")),
    "6": Table(
        "6", "RoI op for keypoints: RoIPool vs. RoIAlign",
        "ResNet-50-FPN, COCO minival, person keypoints", "keypoints-mini without a mask head "
        "(Table 5's keypoint-only network) on the generated keypoint triangles; roi_op is the "
        "op of every head, here the box head's and the keypoint head's", "align",
        (Arm("pool", "RoIPool", {"model.mask_on": False, **_roi("pool")}, "keypoint_shapes",
             {"keypoints": (59.8, 86.2, 66.7)}),
         Arm("align", "RoIAlign (= Table 5's keypoint only)",
             {"model.mask_on": False, **_roi("align")}, "keypoint_shapes",
             {"keypoints": (64.2, 86.6, 69.7)}, same_as=("5", "kp"))),
        schedule="keypoints", preset="keypoints-mini", metrics=_KP + _BOX,
        primary=("keypoints", "AP"), paper_keys=("keypoints",),
        run_seconds=3000 * 0.167 + 3.0),  # measured (idle): 0.167 s/iteration, 2-4 s eval
}
"""The paper's Table 2 sub-tables and Tables 3, 5 and 6 as arms (every arm runs).

Table 3's Mask R-CNN row is 2c's RoIAlign (avg) runs, and Table 6's RoIAlign row Table 5's
keypoint-only runs (``Arm.same_as``): trained once. ``roi_op`` is one field for every head
(box, mask, keypoint), so Table 6's RoIPool arm pools the box head's features with RoIPool too,
as in 2c; a keypoint-only op would need a field of its own (not built)."""

SHAPES_DATA = {"train": (400, 0), "val": (200, 1)}
"""Table 2b's data: ``(images, seed)`` of :func:`minimaskrcnn.data.shapes.make_shapes` for the
train and val sets (128 x 128 images, up to 6 shapes of 3 classes, occluding each other)."""


def shapes_datasets():
    """``(train, val)``: the generated shapes of :data:`SHAPES_DATA` (in memory, seeded: the
    same images on every machine and every rank)."""
    out = []
    for n, seed in (SHAPES_DATA["train"], SHAPES_DATA["val"]):
        ds = shapes_dataset(n, seed)
        ds.source = f"generated shapes ({n} images, seed {seed})"  # what result.json records
        out.append(ds)
    return tuple(out)


KEYPOINT_SHAPES_DATA = {"train": (400, 0), "val": (200, 1)}
"""Tables 5 and 6's data: ``(images, seed)`` of
:func:`minimaskrcnn.data.keypoint_shapes.make_keypoint_shapes` for the train and val sets (96 x
96 images, 1 to 3 triangles of 24 to 40 pixels with 3 keypoints and a mask each)."""


def keypoint_shapes_datasets():
    """``(train, val)``: the generated keypoint triangles of :data:`KEYPOINT_SHAPES_DATA` (in
    memory, seeded: the same images on every machine and every rank)."""
    out = []
    for n, seed in (KEYPOINT_SHAPES_DATA["train"], KEYPOINT_SHAPES_DATA["val"]):
        ds = keypoint_shapes_dataset(n, seed)
        ds.source = f"generated keypoint triangles ({n} images, seed {seed})"
        out.append(ds)
    return tuple(out)


_GENERATED = {"shapes": ("the generated shapes", SHAPES_DATA, shapes_datasets),
              "keypoint_shapes": ("the generated keypoint triangles", KEYPOINT_SHAPES_DATA,
                                  keypoint_shapes_datasets)}


def generated_data(table: str | Table) -> str | None:
    """What ``table`` trains on when its data are generated (``"the generated shapes
    ({'train': (400, 0), ...})"``), ``None`` when the caller gives COCO files (the nuclei)."""
    tab = get_table(table) if isinstance(table, str) else table
    if tab.dataset not in _GENERATED:
        return None
    what, sizes, _make = _GENERATED[tab.dataset]
    return f"{what} ({sizes})"


def generated_datasets(table: str | Table):
    """``(train, val)`` of ``table``'s generated data (2b: :func:`shapes_datasets`; 5, 6:
    :func:`keypoint_shapes_datasets`), ``None`` for a table on COCO files."""
    tab = get_table(table) if isinstance(table, str) else table
    if tab.dataset not in _GENERATED:
        return None
    return _GENERATED[tab.dataset][2]()


def get_table(name: str) -> Table:
    """The table called ``name`` (``"2c"``). Raises ValueError listing the tables."""
    try:
        return TABLES[name]
    except KeyError:
        raise ValueError(f"unknown table {name!r}; tables: {', '.join(TABLES)}") from None


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """A sweep's training schedule, cut from the preset's like ``minimaskrcnn demo``'s.

    The preset's optimiser (SGD momentum 0.9, weight decay 1e-4, its base lr) and transforms;
    ``batch_size`` crops of ``crop_size`` pixels per iteration; a linear warm-up over
    ``iterations // 10`` iterations (at least 1); lr x0.1 at 2/3 and 8/9 of the run (the preset's
    2000 and 2666 of 3000); a checkpoint every ``checkpoint_every`` iterations (what an
    interrupted run resumes from) and at the end; no validation during training.
    """

    name: str
    iterations: int
    batch_size: int = 4
    crop_size: int = 256
    checkpoint_every: int = 100
    preset: str = "nuclei-mini"
    seconds_per_iteration: float | None = None
    """Measured s/iteration with 2 MPI ranks on the 2-core machine (for the cost estimate)."""
    eval_seconds: float | None = None
    """Measured seconds of one evaluation on the full DSB2018 val set (82 images), 2 ranks."""

    def apply(self, cfg: Config, seed: int) -> Config:
        """``cfg`` with this schedule and ``seed`` (model init, crops and samples)."""
        it = self.iterations
        cfg = apply_overrides(shorten_schedule(cfg, it), {
            "train.batch_size": self.batch_size, "train.crop_size": self.crop_size,
            "train.checkpoint_every": min(self.checkpoint_every, it),
            "train.log_every": max(1, min(20, it // 10)), "train.seed": int(seed)})
        return dataclasses.replace(cfg, name=f"{cfg.name}-ablate-{self.name}")

    def with_iterations(self, iterations: int) -> Schedule:
        """The same schedule cut to ``iterations`` (warm-up and lr steps scaled)."""
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        if iterations == self.iterations:
            return self
        return dataclasses.replace(self, name=f"{self.name}-{iterations}", iterations=iterations)

    def run_seconds(self) -> float | None:
        """Estimated seconds of one run (train + evaluate), or None if not measured."""
        if self.seconds_per_iteration is None:
            return None
        return self.iterations * self.seconds_per_iteration + (self.eval_seconds or 0.0)


SCHEDULES: dict[str, Schedule] = {
    "short": Schedule("short", iterations=600, batch_size=4, crop_size=256, checkpoint_every=100,
                      seconds_per_iteration=0.93, eval_seconds=60.0),
    "shapes": Schedule("shapes", iterations=3000, batch_size=4, crop_size=128,
                       checkpoint_every=100, preset="shapes-mini",
                       seconds_per_iteration=0.18, eval_seconds=4.0),
    "keypoints": Schedule("keypoints", iterations=3000, batch_size=4, crop_size=96,
                          checkpoint_every=100, preset="keypoints-mini",
                          seconds_per_iteration=0.12, eval_seconds=3.0),
    "smoke": Schedule("smoke", iterations=2, batch_size=2, crop_size=256, checkpoint_every=1),
}
"""``short``: the nuclei tables' schedule, 600 iterations of batch 4 (2,400 crops: a fifth of the
preset's 3000 x 4) -- 0.93 s/iteration measured with 2 MPI ranks while other jobs shared the
two cores, about 10 minutes a run with the evaluation. ``shapes``: Table 2b's, 3000 iterations
of batch 4 whole 128 x 128 images (five times shapes-mini's own 600: at 600 the softmax arm's
masks have not yet crossed the 0.5 threshold, docs/ablations.md), 0.18 s/iteration with 2 MPI
ranks, about 9.5 minutes a run. ``keypoints``: Tables 5 and 6's, 3000 iterations of batch 4
whole 96 x 96 images of the keypoint triangles (five times keypoints-mini's own 600, as for 2b;
its lr 0.005), 0.050 (box only) to 0.176 (keypoints and mask) s/iteration with 2 MPI ranks
(Table 5's runs, median 0.12), 2.5 to 9.5 minutes a run. ``smoke``: 2 iterations
of batch 2, to check the machinery end to end."""


def arm_config(arm: Arm, seed: int, *, schedule: Schedule, num_classes: int | None = None,
               preset: str | None = None, base: Config | None = None) -> Config:
    """The Config one run of ``arm`` trains: the preset (or ``base``), cut to ``schedule``,
    ``seed``, the arm's overrides (last: they win), and ``num_classes`` (the data set's) if given.

    Raises:
        ValueError: the arm is unavailable (the message says why), or a bad override.
    """
    if arm.unavailable:
        raise ValueError(f"arm {arm.name!r} is not available yet: {arm.unavailable}")
    base = base if base is not None else get_preset(preset or schedule.preset)
    if num_classes is not None:
        base = dataclasses.replace(base, model=dataclasses.replace(base.model,
                                                                   num_classes=num_classes))
    return apply_overrides(schedule.apply(base, seed), arm.overrides)


def get_schedule(schedule: Schedule | str) -> Schedule:
    """``schedule`` itself, or the one of :data:`SCHEDULES` it names. Raises ValueError listing
    the schedules for another name."""
    if isinstance(schedule, Schedule):
        return schedule
    try:
        return SCHEDULES[schedule]
    except KeyError:
        raise ValueError(f"unknown schedule {schedule!r}; schedules: "
                         f"{', '.join(SCHEDULES)}") from None


def select_arms(tab: Table, arms: Sequence[str] | None) -> list[Arm]:
    """The arms of ``tab`` called ``arms`` (each must be available), or (``None`` / empty) every
    available arm.

    Raises:
        ValueError: an unknown or unavailable arm asked for, or a table without an available
            arm (the message says why).
    """
    if arms:
        chosen = [tab.arm(a) for a in arms]
        for a in chosen:
            if a.unavailable:
                raise ValueError(f"arm {tab.name}/{a.name} is not available yet: "
                                 f"{a.unavailable}")
        return chosen
    chosen = [a for a in tab.arms if not a.unavailable]
    if not chosen:
        reasons = sorted({a.unavailable for a in tab.arms})
        raise ValueError(f"table {tab.name} has no arm that can run yet: {'; '.join(reasons)}")
    return chosen
