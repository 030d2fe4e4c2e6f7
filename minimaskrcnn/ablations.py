"""The paper's ablations (Mask R-CNN, Table 2) in miniature: arms, seeded sweeps, a report.

A *table* (``"2b"``, ``"2c"``, ``"2d"``, ``"2e"``: :data:`TABLES`) is a list of *arms*; an arm
(:class:`Arm`) is nothing but a named set of config overrides (``{"model.roi_op": "pool", ...}``)
plus a data set choice and the paper's row. A *sweep* trains every arm of a table for several
seeds and evaluates each run on the val set::

    <sweep dir>/<table>/<arm>/seed<k>/      the run folder of training.loop.train (config.json,
                                            log.jsonl, checkpoints, loss_curve.png), and
    <sweep dir>/<table>/<arm>/seed<k>/result.json   written when the run is finished and evaluated

``result.json`` (:data:`RESULT_FILE`): ``{"table", "arm", "label", "seed", "schedule" (its
name), "overrides" (the arm's), "config" (config_to_dict),
"data" (the train / val sets: source, images), "iterations", "metrics" ({"segm": {"AP", "AP50",
"AP75"}, "bbox": {...}, "dsb_score", "num_images", "seconds_per_image", ...}),
"train_seconds" (sum of the logged iteration times, over every call that trained the run),
"seconds_per_iteration" (median), "eval_seconds", "wall_seconds" (the call that finished it),
"world_size" (W), "resumed_from" (the iteration it started from, 0 if fresh), "finished" (local
time, ISO 8601)}``. Metrics are fractions (0..1), times seconds.

Resumable: a run with a ``result.json`` is skipped; a run with a checkpoint continues from it
(``train(..., resume=True)``: the same batches as an uninterrupted run); a run folder without
one is trained afresh (``overwrite``). Killing the command and starting it again therefore
continues where it stopped. A finished run whose stored config is not the one the sweep would
train now (another schedule or preset) is refused rather than mixed into the table.

Data-parallel: started under ``mpiexec -n W``, every run uses the W ranks (``train`` and
``evaluate_model`` share the work); rank 0 decides each run's state (:func:`run_state`) and
broadcasts it, so every rank skips, resumes or starts the same runs, and rank 0 alone writes
``result.json`` and prints.

The report (:func:`write_report`) reads the ``result.json`` files and writes one markdown table
per table -- per arm the mean and spread over seeds of mask / box AP, AP50, AP75 and the DSB
score, next to the paper's row -- between markers in ``docs/ablations.md``, leaving the rest of
the page as written.

The paper's numbers (:data:`TABLES`, ``Arm.paper``) are COCO AP in points, copied from the
paper's Table 2 (He et al., "Mask R-CNN", ICCV 2017 / arXiv:1703.06870) and checked against its
text.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from minimaskrcnn.config import (
    Config,
    apply_overrides,
    config_to_dict,
    get_preset,
    shorten_schedule,
)

__all__ = [
    "METRIC_KEYS", "RESULT_FILE", "SCHEDULES", "SHAPES_DATA", "TABLES", "Arm", "Schedule",
    "Table", "apply_overrides", "arm_config", "compare_table", "format_table", "get_table",
    "load_results", "read_summary", "run_dir", "run_state", "run_sweep", "shapes_datasets",
    "summarize", "table_results", "write_report",
]

RESULT_FILE = "result.json"

METRIC_KEYS = (("segm", "AP"), ("segm", "AP50"), ("segm", "AP75"),
               ("bbox", "AP"), ("bbox", "AP50"), ("bbox", "AP75"), ("dsb_score", None))
"""The metrics the report shows, as ``(key, subkey)`` into ``evaluate_model``'s metrics."""


# --------------------------------------------------------------------------------------------
# Arms and tables
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arm:
    """One row of an ablation table.

    Attributes:
        name: folder name and identifier (``"warp_max"``).
        label: the row's label in the report (``"RoIWarp, max"``).
        overrides: ``{"model.<field>" | "train.<field>" | "eval.<field>": value}`` applied to
            the sweep's base config (:func:`apply_overrides`).
        dataset: ``"coco"`` (the COCO files the sweep is given: the DSB2018 nuclei) or
            ``"shapes"`` (the generated multi-class shapes of :func:`shapes_datasets`, for 2b).
            The caller passes the data sets to :func:`run_sweep`.
        paper: the paper's row in AP points: ``{"segm": (AP, AP50, AP75)}`` and, where the paper
            gives it, ``"bbox"``; ``None`` for a row the paper does not have.
        unavailable: why the arm cannot run yet; ``None`` if it can.
        same_as: ``(table, arm)`` of another table's arm that trains exactly this config (2e's
            FCN row is 2c's RoIAlign row): the sweep runs (or skips) that run and the report
            shows its results in both tables.
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
    """One of the paper's Table 2 sub-tables, as arms.

    Attributes:
        name: ``"2c"`` ...; title: what it compares; paper_setting: the paper's backbone and data;
        ours: what our rows train (preset, data); reference: the arm the deltas are taken
        against; arms: the rows, in the paper's order; schedule: the name of the table's
        schedule in :data:`SCHEDULES` (``"short"`` on the nuclei, ``"shapes"`` for 2b);
        preset: the network the arms change (``"nuclei-mini"``, ``"shapes-mini"`` for 2b).
        run_seconds: measured seconds of one of the table's runs (training and evaluation, 2
            MPI ranks on the 2-core machine) where its network costs other than the schedule's
            estimate (``Schedule.run_seconds``); ``None``: the schedule's.
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
}
"""The paper's Table 2 sub-tables as arms (every arm runs)."""

SHAPES_DATA = {"train": (400, 0), "val": (200, 1)}
"""Table 2b's data: ``(images, seed)`` of :func:`minimaskrcnn.data.shapes.make_shapes` for the
train and val sets (128 x 128 images, up to 6 shapes of 3 classes, occluding each other)."""


def shapes_datasets():
    """``(train, val)``: the generated shapes of :data:`SHAPES_DATA` (in memory, seeded: the
    same images on every machine and every rank)."""
    from minimaskrcnn.data.shapes import shapes_dataset

    out = []
    for n, seed in (SHAPES_DATA["train"], SHAPES_DATA["val"]):
        ds = shapes_dataset(n, seed)
        ds.source = f"generated shapes ({n} images, seed {seed})"  # what result.json records
        out.append(ds)
    return tuple(out)


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
    "smoke": Schedule("smoke", iterations=2, batch_size=2, crop_size=256, checkpoint_every=1),
}
"""``short``: the nuclei tables' schedule, 600 iterations of batch 4 (2,400 crops: a fifth of the
preset's 3000 x 4) -- 0.93 s/iteration measured with 2 MPI ranks while other jobs shared the
two cores, about 10 minutes a run with the evaluation. ``shapes``: Table 2b's, 3000 iterations
of batch 4 whole 128 x 128 images (five times shapes-mini's own 600: at 600 the softmax arm's
masks have not yet crossed the 0.5 threshold, docs/ablations.md), 0.18 s/iteration with 2 MPI
ranks, about 9.5 minutes a run. ``smoke``: 2 iterations of batch 2, to check the machinery end
to end."""


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


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


def run_dir(sweep_dir: str, table: str, arm: str, seed: int) -> str:
    """``<sweep_dir>/<table>/<arm>/seed<seed>``."""
    return os.path.join(sweep_dir, table, arm, f"seed{seed}")


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as e:
        raise ValueError(f"{path}: not a result file ({e}); delete it to run that run again") \
            from None


def run_state(path: str) -> tuple[str, int]:
    """What a run folder needs: ``("done", iterations)`` (it has a ``result.json``),
    ``("resume", iteration)`` (a checkpoint at ``iteration``), or ``("fresh", 0)`` (nothing
    to continue: no folder, an empty one, or one killed before its first checkpoint).

    Raises:
        ValueError: an unreadable ``result.json``.
        FileNotFoundError: ``last_checkpoint`` names a missing checkpoint.
    """
    from minimaskrcnn.training.run_folder import find_last_checkpoint

    result = os.path.join(path, RESULT_FILE)
    if os.path.isfile(result):
        return "done", int(_read_json(result).get("iterations", 0))
    if not os.path.isdir(path):
        return "fresh", 0
    last = find_last_checkpoint(path)
    if last is None:
        return "fresh", 0
    m = re.search(r"checkpoint_(\d+)\.npz$", last)
    return "resume", int(m.group(1)) if m else 0


def _stored_config(stored: dict, path: str) -> dict:
    """The model / train / eval sections a ``result.json`` stores, with the fields added to
    the config since it was written filled in with their defaults (what the run trained)."""
    from minimaskrcnn.config import config_from_dict

    try:
        full = config_to_dict(config_from_dict(stored.get("config") or {}))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {RESULT_FILE} holds a config this version cannot read ({e}); "
                         "use another sweep folder, or delete the run") from None
    return {k: full[k] for k in ("model", "train", "eval")}


def _config_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_differences(va, vb, f"{prefix}{k}.")
        elif (list(va) if isinstance(va, (list, tuple)) else va) != (
                list(vb) if isinstance(vb, (list, tuple)) else vb):
            out.append(f"{prefix}{k} ({va!r} stored, {vb!r} now)")
    return out


def _data_info(dataset) -> dict:
    source = getattr(dataset, "source", None)
    return {"source": source if isinstance(source, str) else None, "images": len(dataset)}


def _log_times(path: str) -> tuple[float, float | None]:
    """(sum, median) of the ``seconds`` of a run folder's ``log.jsonl`` (0, None without)."""
    seconds = []
    try:
        with open(os.path.join(path, "log.jsonl"), encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if "seconds" in rec and "error" not in rec:
                    seconds.append(float(rec["seconds"]))
    except OSError:
        return 0.0, None
    return float(sum(seconds)), (float(statistics.median(seconds)) if seconds else None)


def _write_atomic_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, allow_nan=True)
        f.write("\n")
    os.replace(tmp, path)


def _prune_checkpoints(path: str) -> None:
    """Remove a finished run's checkpoints but the last (what ``evaluate`` would read)."""
    from minimaskrcnn.training.run_folder import find_last_checkpoint

    last = find_last_checkpoint(path)
    for p in glob.glob(os.path.join(path, "checkpoint_*.npz")):
        if last is None or os.path.basename(p) != os.path.basename(last):
            os.remove(p)


def run_sweep(table: str | Table, sweep_dir: str, train_dataset, val_dataset, *,
              seeds: Sequence[int] = (0, 1, 2), schedule: Schedule | str | None = None,
              arms: Sequence[str] | None = None, preset: str | None = None,
              base: Config | None = None, val_limit: int | None = None, progress: bool = True,
              keep_checkpoints: bool = False, train_fn: Callable | None = None,
              evaluate_fn: Callable | None = None, comm=None,
              log: Callable[[str], None] | None = print) -> list[dict]:
    """Train and evaluate every available arm of ``table`` for every seed, resumably.

    Runs go arm by arm, seed by seed (all arms of seed 0 first, so that an early look at the
    table has every row): for each, rank 0 decides :func:`run_state` and broadcasts it; a done
    run is skipped, a run with a checkpoint resumes, another trains afresh; then
    ``evaluate_fn`` on ``val_dataset`` and rank 0 writes ``result.json`` (module docstring).

    Args:
        table: a table name (``"2c"``) or :class:`Table`.
        sweep_dir: the sweep's folder (created).
        train_dataset, val_dataset: ``CocoDataset`` s (the DSB2018 nuclei for 2c, 2d, 2e;
            :func:`shapes_datasets` for 2b; the arms' ``num_classes`` is the train set's).
        seeds: the seeds of every arm (>= 0, distinct).
        schedule: a :class:`Schedule` or the name of one of :data:`SCHEDULES` (default the
            table's).
        arms: run only these arms (names); default every available arm.
        preset: the base preset (default the table's, ``nuclei-mini`` or ``shapes-mini``).
        base: a base Config instead of a preset (a test's tiny network).
        val_limit: evaluate on the first ``val_limit`` val images only.
        progress: tqdm bars in training and evaluation.
        keep_checkpoints: keep every checkpoint of a finished run (default: the last only).
        train_fn: ``training.loop.train`` (a test passes a fake with its signature).
        evaluate_fn: ``evaluation.evaluate_model`` (likewise).
        comm: the data-parallel communicator (default the process's).
        log: where rank 0 prints one line per run (``None``: silent).

    Returns:
        The results (``result.json`` contents) of the selected runs, done before or now, in
        run order (on every rank).

    Raises:
        ValueError: an unknown table, arm or schedule, an unavailable arm asked for by name, a
            table without an available arm, bad seeds, a train set without instances, a finished
            run whose stored config differs from the one it would train now (the message names
            the fields), an unreadable ``result.json``.
        RunFolderError: a run folder locked by another training, or a resume that changes the
            model or the schedule (from ``train``).
    """
    from minimaskrcnn.distributed import get_comm

    if train_fn is None:
        from minimaskrcnn.training.loop import train as train_fn
    if evaluate_fn is None:
        from minimaskrcnn.evaluation import evaluate_model as evaluate_fn
    comm = get_comm() if comm is None else comm
    tab = get_table(table) if isinstance(table, str) else table
    sched = _schedule(schedule if schedule is not None else tab.schedule)
    preset = preset or tab.preset
    seeds = [int(s) for s in seeds]
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct integers >= 0, got {seeds}")
    chosen = _select_arms(tab, arms)
    say = log if (log is not None and comm.is_main) else (lambda s: None)
    num_classes = train_dataset.num_classes
    results = []
    plan = [(arm, seed) for seed in seeds for arm in chosen]
    for n, (arm, seed) in enumerate(plan, 1):
        cfg = arm_config(arm, seed, schedule=sched, num_classes=num_classes, preset=preset,
                         base=base)
        # an arm that is another table's arm (same config) runs in, and as, that arm's folder
        owner_table, owner = ((tab.name, arm) if arm.same_as is None else
                              (arm.same_as[0], get_table(arm.same_as[0]).arm(arm.same_as[1])))
        path = run_dir(sweep_dir, owner_table, owner.name, seed)
        decision = None
        if comm.is_main:
            state, at = run_state(path)
            stored = _read_json(os.path.join(path, RESULT_FILE)) if state == "done" else None
            decision = (state, at, stored)
        state, at, stored = comm.bcast(decision)
        head = f"[{n}/{len(plan)}] {tab.name}/{arm.name}/seed{seed}"
        if arm.same_as is not None:
            head += f" (= {owner_table}/{owner.name})"
        if state == "done":
            now = config_to_dict(cfg)  # the name aside: model, train and eval must agree
            diffs = _config_differences(_stored_config(stored, path),
                                        {k: now[k] for k in ("model", "train", "eval")})
            if diffs:
                raise ValueError(f"{path}: finished with another config ({', '.join(diffs[:4])}"
                                 f"{', ...' if len(diffs) > 4 else ''}); use another sweep "
                                 "folder, or delete the run")
            say(f"{head}: done, skipped (mask AP {stored['metrics']['segm']['AP']:.3f})")
            results.append(stored)
            continue
        changes = ", ".join(f"{k.partition('.')[2]}={v!r}" for k, v in arm.overrides.items())
        say(f"{head}: {'resuming from iteration ' + str(at) if state == 'resume' else 'training'}"
            f" ({sched.iterations} iterations, {changes or 'the default'}, {comm.size} rank(s))")
        t0 = time.perf_counter()
        out = train_fn(cfg, train_dataset, path, resume=state == "resume",
                       overwrite=state == "fresh", progress=progress, comm=comm)
        t1 = time.perf_counter()
        metrics = evaluate_fn(out["model"], val_dataset, cfg.eval, limit=val_limit,
                              progress=progress, comm=comm)
        t2 = time.perf_counter()
        metrics = {k: v for k, v in metrics.items() if not k.startswith("_")}
        train_seconds, median = _log_times(path)
        record = {
            "table": owner_table, "arm": owner.name, "label": owner.label, "seed": seed,
            "schedule": sched.name, "overrides": dict(owner.overrides),
            "config": config_to_dict(cfg),
            "data": {"train": _data_info(train_dataset), "val": _data_info(val_dataset),
                     "val_limit": val_limit},
            "iterations": int(out["iteration"]), "metrics": metrics,
            "train_seconds": train_seconds, "seconds_per_iteration": median,
            "eval_seconds": t2 - t1, "wall_seconds": t2 - t0, "world_size": comm.size,
            "resumed_from": at if state == "resume" else 0,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        record = json.loads(json.dumps(record))  # as stored (lists), as a skipped run returns it
        if comm.is_main:
            _write_atomic_json(os.path.join(path, RESULT_FILE), record)
            if not keep_checkpoints:
                _prune_checkpoints(path)
        comm.barrier()
        say(f"{head}: mask AP {metrics['segm']['AP']:.3f}, box AP {metrics['bbox']['AP']:.3f}, "
            f"DSB {metrics['dsb_score']:.3f}; train {t1 - t0:.0f} s, eval {t2 - t1:.0f} s")
        results.append(record)
    return results


def _schedule(schedule: Schedule | str) -> Schedule:
    if isinstance(schedule, Schedule):
        return schedule
    try:
        return SCHEDULES[schedule]
    except KeyError:
        raise ValueError(f"unknown schedule {schedule!r}; schedules: "
                         f"{', '.join(SCHEDULES)}") from None


def _select_arms(tab: Table, arms: Sequence[str] | None) -> list[Arm]:
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


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def load_results(sweep_dir: str, table: str | None = None) -> list[dict]:
    """Every ``<sweep_dir>/<table>/<arm>/seed<k>/result.json`` (of ``table`` only if given),
    sorted by table, arm and seed.

    Raises:
        ValueError: an unreadable result file (named).
    """
    pattern = os.path.join(sweep_dir, table or "*", "*", "seed*", RESULT_FILE)
    results = [_read_json(p) for p in glob.glob(pattern)]
    return sorted(results, key=lambda r: (str(r.get("table")), str(r.get("arm")),
                                          int(r.get("seed", 0))))


def table_results(table: str | Table, results: Sequence[dict]) -> list[dict]:
    """The results of ``table``'s arms among ``results``: its own, and for an arm that is
    another table's (``Arm.same_as``) that arm's results, relabelled as this table's arm."""
    tab = get_table(table) if isinstance(table, str) else table
    out = [r for r in results if r.get("table") == tab.name]
    for arm in tab.arms:
        if arm.same_as is not None:
            out += [{**r, "table": tab.name, "arm": arm.name, "label": arm.label,
                     "same_as": list(arm.same_as)}
                    for r in results if (r.get("table"), r.get("arm")) == tuple(arm.same_as)]
    return out


def _metric(result: dict, key: str, sub: str | None) -> float:
    m = result["metrics"][key]
    return float(m if sub is None else m[sub])


def summarize(results: Sequence[dict]) -> dict[str, dict]:
    """Per arm: ``{"n", "seeds", "iterations", "train_seconds" (mean), "wall_seconds" (mean),
    "<key>[.<sub>]": {"mean", "std" (sample, ddof 1; 0 for one seed), "min", "max",
    "values"}}`` over the seeds, for each of :data:`METRIC_KEYS` (``"segm.AP"``, ...,
    ``"dsb_score"``). Values are fractions as stored.

    Raises:
        ValueError: results of one arm from several tables mixed in.
    """
    by_arm: dict[str, list[dict]] = {}
    tables = {r.get("table") for r in results}
    if len(tables) > 1:
        raise ValueError(f"results of several tables mixed: {sorted(map(str, tables))}")
    for r in results:
        by_arm.setdefault(r["arm"], []).append(r)
    out = {}
    for arm, rs in by_arm.items():
        rs = sorted(rs, key=lambda r: int(r["seed"]))
        s = {"n": len(rs), "seeds": [int(r["seed"]) for r in rs],
             "iterations": sorted({int(r.get("iterations", 0)) for r in rs}),
             "train_seconds": statistics.fmean(float(r.get("train_seconds") or 0) for r in rs),
             "wall_seconds": statistics.fmean(float(r.get("wall_seconds") or 0) for r in rs),
             "schedules": sorted({str(r.get("schedule")) for r in rs})}
        for key, sub in METRIC_KEYS:
            values = [_metric(r, key, sub) for r in rs]
            s[key if sub is None else f"{key}.{sub}"] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values), "max": max(values), "values": values}
        out[arm] = s
    return out


def _pts(x: float) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{round(100 * x, 1) + 0.0:.1f}"


def _paper_cell(triple) -> str:
    if triple is None:
        return "-"
    return " / ".join("-" if not math.isfinite(v) else f"{v:.1f}" for v in triple)


def _ranking(points: Mapping[str, float]) -> str:
    """``"a > b = c"``: names by decreasing AP points, ``=`` where the values shown (0.1 points)
    tie."""
    order = sorted(points, key=lambda n: -points[n])
    out = order[0]
    for prev, name in zip(order, order[1:], strict=False):
        out += (" = " if round(points[prev], 1) == round(points[name], 1) else " > ") + name
    return out


def format_table(table: str | Table, results: Sequence[dict]) -> str:
    """The markdown of one table: a row per arm (in the paper's order) with, over the seeds,
    mask AP / AP50 / AP75, box AP / AP50 / AP75 and the DSB score as ``mean ± std`` in AP points
    (x100), the mask AP's min-max, the number of seeds, the mask AP's difference to the
    reference arm (ours, and the paper's), and the paper's mask (and box, where given) row;
    arms without results say "not run", unavailable arms say why. Ends with the ranking by
    mask AP, ours and the paper's, and the schedule and cost of the runs.
    """
    tab = get_table(table) if isinstance(table, str) else table
    results = table_results(tab, results)
    summary = summarize(results)
    ref = summary.get(tab.reference)
    ref_paper = next((a.paper for a in tab.arms if a.name == tab.reference), None)
    head = ("| arm | seeds | mask AP | mask AP50 | mask AP75 | box AP | box AP50 | box AP75 | "
            "DSB score | mask AP min-max | Δ mask AP (ours / paper) | paper mask AP / AP50 / AP75 "
            "| paper box AP / AP50 / AP75 |")
    lines = [head, "| " + " | ".join(["---"] * 13) + " |"]
    notes = []
    for arm in tab.arms:
        s = summary.get(arm.name)
        paper_mask = _paper_cell(arm.paper.get("segm") if arm.paper else None)
        paper_box = _paper_cell(arm.paper.get("bbox") if arm.paper else None)
        if arm.paper and ref_paper and arm.name != tab.reference:
            paper_delta = arm.paper["segm"][0] - ref_paper["segm"][0]
            paper_delta = f"{paper_delta:+.1f}" if math.isfinite(paper_delta) else "-"
        else:
            paper_delta = "-" if arm.name != tab.reference else "(reference)"
        if s is None:
            why = f"not available yet: {arm.unavailable}" if arm.unavailable else "not run yet"
            delta = paper_delta if arm.name == tab.reference else f"- / {paper_delta}"
            row = [arm.label, "0", why, *[""] * 6, "-", delta, paper_mask, paper_box]
            lines.append("| " + " | ".join(row) + " |")
            continue
        cells = []
        for key, sub in METRIC_KEYS:
            m = s[key if sub is None else f"{key}.{sub}"]
            cells.append(f"{_pts(m['mean'])} ± {_pts(m['std'])}")
        ap = s["segm.AP"]
        if ref is not None and arm.name != tab.reference:
            ours_delta = f"{round(100 * (ap['mean'] - ref['segm.AP']['mean']), 1) + 0.0:+.1f}"
        else:
            ours_delta = "(reference)" if arm.name == tab.reference else "-"
        delta = (f"{ours_delta} / {paper_delta}" if arm.name != tab.reference
                 else "(reference)")
        lines.append(f"| {arm.label} | {s['n']} | " + " | ".join(cells)
                     + f" | {_pts(ap['min'])}-{_pts(ap['max'])} | {delta} | {paper_mask} | "
                       f"{paper_box} |")
        if len(s["iterations"]) > 1 or len(s["schedules"]) > 1:
            notes.append(f"{arm.label}: runs of different lengths {s['iterations']} / schedules "
                         f"{s['schedules']} mixed")
    ran = [a for a in tab.arms if a.name in summary]
    if ran:
        lines.append("")
        lines.append("Ranking by mask AP, ours: " + _ranking(
            {a.name: 100 * summary[a.name]["segm.AP"]["mean"] for a in ran}) + ".")
        with_paper = [a for a in ran if a.paper and math.isfinite(a.paper["segm"][0])]
        if with_paper:
            lines.append("The paper's (same arms): " + _ranking(
                {a.name: a.paper["segm"][0] for a in with_paper}) + ".")
        rs = results
        iters = sorted({int(r.get("iterations", 0)) for r in rs})
        per_it = [r["seconds_per_iteration"] for r in rs if r.get("seconds_per_iteration")]
        # a run's cost from its median iteration (robust to a run paused or sharing the
        # machine for a while) plus its evaluation
        walls = [(int(r.get("iterations", 0)) * float(r["seconds_per_iteration"])
                  if r.get("seconds_per_iteration") else float(r.get("train_seconds") or 0))
                 + float(r.get("eval_seconds") or 0) for r in rs]
        ws = sorted({int(r.get("world_size", 1)) for r in rs})
        lines.append(
            f"{len(rs)} runs of {'/'.join(map(str, iters))} iterations on {'/'.join(map(str, ws))}"
            f" MPI rank(s): median {statistics.median(per_it) if per_it else float('nan'):.2f} "
            f"s/iteration, {statistics.fmean(walls) / 60:.1f} minutes a run (iterations x "
            f"median s/iteration + evaluation), {sum(walls) / 3600:.1f} hours in all.")
    for n in notes:
        lines.append(f"Warning: {n}.")
    return "\n".join(lines)


_BEGIN = "<!-- ablations:{} begin (written by `minimaskrcnn ablate --report`; edits inside are lost) -->"
_END = "<!-- ablations:{} end -->"


def write_report(sweep_dir: str, path: str, tables: Sequence[str] = tuple(TABLES), *,
                 summary_path: str | None = None) -> str:
    """Write (or update) the markdown page ``path`` with :func:`format_table` of each table.

    Each table goes between its markers (``<!-- ablations:2c begin ... -->`` and
    ``<!-- ablations:2c end -->``): where the page has them, only the text between is replaced,
    so the hand-written rest of the page stays; a table without markers is appended under a
    heading; a missing page is created.

    If ``summary_path`` is given and there are results, also write there (JSON) ``{table: {arm:
    summarize(...)[arm]}}`` for the tables with results: what the chapters read
    (``docs/results/ablations.json``).

    Returns:
        The page's new text.

    Raises:
        ValueError: an unknown table, an unreadable result file.
    """
    results = load_results(sweep_dir)
    if summary_path is not None and results:
        summary = {}
        for name in tables:
            of_table = table_results(name, results)
            if of_table:
                summary[name] = summarize(of_table)
        if summary:
            os.makedirs(os.path.dirname(os.path.abspath(summary_path)), exist_ok=True)
            _write_atomic_json(summary_path, summary)
    text = "# Ablations: the paper's Table 2 in miniature\n"
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    for name in tables:
        tab = get_table(name)
        block = (_BEGIN.format(name) + "\n" + format_table(tab, results) + "\n"
                 + _END.format(name))
        pattern = re.compile(re.escape(_BEGIN.format(name)) + r".*?" + re.escape(_END.format(name)),
                             re.S)
        if pattern.search(text):
            text = pattern.sub(lambda _m, b=block: b, text, count=1)
        else:
            text = (text.rstrip("\n") + f"\n\n## Table {name}: {tab.title}\n\n" + block + "\n")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return text


def describe(tables: Sequence[str] = tuple(TABLES), seeds: int = 3,
             schedule: Schedule | str | None = None) -> str:
    """A text listing of the tables' arms (what each overrides, or why it cannot run yet) and
    the runs and estimated time of a sweep of ``seeds`` seeds (``schedule``: default each
    table's). An arm that is another table's arm (``same_as``) costs nothing more."""
    lines = []
    for name in tables:
        tab = get_table(name)
        sched = _schedule(schedule if schedule is not None else tab.schedule)
        lines.append(f"Table {tab.name}: {tab.title} (paper: {tab.paper_setting}; ours: "
                     f"{tab.ours})")
        for a in tab.arms:
            what = (f"not available yet: {a.unavailable}" if a.unavailable else
                    ", ".join(f"{k}={v!r}" for k, v in a.overrides.items()) or "the default")
            if a.same_as:
                what += f" (the runs of {a.same_as[0]}/{a.same_as[1]})"
            lines.append(f"  {a.name:14s} {a.label}: {what}")
        runs = sum(1 for a in tab.arms if not a.unavailable and not a.same_as) * seeds
        if runs:
            cost = (tab.run_seconds if tab.run_seconds and sched.name == tab.schedule
                    else sched.run_seconds())
            lines.append(f"  {runs} runs ({seeds} seeds) of schedule {sched.name!r} "
                         f"({sched.iterations} iterations of batch {sched.batch_size}, preset "
                         f"{tab.preset})"
                         + (f": about {cost / 60:.0f} minutes each, {runs * cost / 3600:.1f} "
                            "hours in all with 2 MPI ranks on the 2-core machine" if cost else ""))
    return "\n".join(lines)


def read_summary(path: str) -> dict:
    """The summary JSON :func:`write_report` writes (``{table: {arm: summarize(...)[arm]}}``);
    ``{}`` when the file does not exist (no run finished yet).

    Raises:
        ValueError: the file exists but is not such a summary (named).
    """
    if not os.path.isfile(path):
        return {}
    data = _read_json(path)
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path}: not an ablation summary ({{table: {{arm: ...}}}})")
    return data


def compare_table(table: str, summary: Mapping[str, Mapping]) -> str:
    """A plain-text table for the chapters: per arm of ``table``, the paper's mask AP / AP50 /
    AP75 and ours (mean over the seeds, ± sample std of the mask AP, the number of seeds) from a
    :func:`read_summary` dict; "-" where the paper has no figure or no run has finished."""
    tab = get_table(table)
    ours = summary.get(tab.name, {})
    width = max(len(a.label) for a in tab.arms)
    lines = [f"Table {tab.name}: {tab.title}",
             f"  paper: {tab.paper_setting}; ours: {tab.ours}",
             f"  {'arm':{width}s}  {'paper mask AP / AP50 / AP75':>28s}   ours (mask AP ± std / "
             "AP50 / AP75, seeds)"]
    for arm in tab.arms:
        paper = _paper_cell(arm.paper.get("segm") if arm.paper else None)
        s = ours.get(arm.name)
        if s and "segm.AP" in s:
            ap = s["segm.AP"]
            n = s.get("n", len(ap["values"]))
            mine = (f"{_pts(ap['mean'])} ± {_pts(ap['std'])} / {_pts(s['segm.AP50']['mean'])} / "
                    f"{_pts(s['segm.AP75']['mean'])}  ({n} seed{'s' if n != 1 else ''})")
        else:
            mine = "-"
        lines.append(f"  {arm.label:{width}s}  {paper:>28s}   {mine}")
    return "\n".join(lines)
