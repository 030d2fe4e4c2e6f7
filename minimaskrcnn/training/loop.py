"""The training loop: seeded batches, one :func:`~minimaskrcnn.training.step.train_step` per
iteration under a warm-up and multi-step schedule, logs, checkpoints, resume, periodic
validation and a loss curve (Detectron2's ``DefaultTrainer`` with its hooks, torchvision's
reference ``train.py``, written as one function).

Iteration ``t`` (0-based), on each of W data-parallel ranks (W = 1 without ``mpiexec``)::

    ks     = balance_batch(batches.instance_counts(t), comm)  # this rank's crops (W > 1)
    batch  = batches.batch(t, ks)                        # crops of stream CROPS, sample p
    rngs   = [sample_rng(seed, Stream.SAMPLING, p) for each image's sample number p]
    losses = train_step(model, optimizer, batch, rngs)   # forward, backward, allreduce, guard,
                                                         # SGD at lr(t) (training/step.py)
    scheduler.step()                                     # lr(t + 1): warm-up, x gamma at
                                                         # each milestone
    log.jsonl += one record; every checkpoint_every: a checkpoint; every val_every: evaluate

Data parallelism (MPI, :mod:`minimaskrcnn.distributed`; launch with
``mpiexec -n W minimaskrcnn train ...``): every rank holds the whole model (broadcast from rank
0 at the start and checked equal by checksum), runs its share of every global batch (the crops
dealt by their instances, known from the annotations before any image is read, so that the
ranks' forward and backward passes take about as long: ``balance_batch``), and applies the
same SGD step to the summed gradient; each image's crops and samples come from streams keyed by
its sample number, so W ranks compute the gradient of one process up to float summation order
whichever rank runs which crop, and a run may resume with another W. Rank 0 alone writes the
run folder and shows the progress bar; validation shares the images among the ranks. An exception on any rank
stops the whole job (``abort_on_error``), leaving the last good checkpoint as it is.

The guard (:mod:`~minimaskrcnn.training.guard`) stops the run with
:class:`~minimaskrcnn.training.guard.NonFiniteLossError` naming the iteration, the term (loss,
gradient, parameter or momentum buffer) and the last good checkpoint, and the loop logs the
iteration with an ``error`` field; an op that refuses the values a diverging model gives it (a
ValueError from an input check, as a huge learning rate causes) is reported the same way.
Nothing is written over the last checkpoint, and no checkpoint is written with non-finite
values.

Every random draw is a function of ``(seed, sample number)`` (:mod:`minimaskrcnn.data.loader`),
so the data RNG state a checkpoint needs is just ``seed`` and the iteration: ``resume=True``
reloads the parameters, the optimiser's momentum buffers and the iteration, and continues with
exactly the batches, crops and samples of the uninterrupted run. Resuming refuses a config
whose model, data stream (seed, batch size, crop size, flips) or optimiser schedule differs
from the checkpoint's (:data:`RESUME_FIXED_FIELDS`); the iterations and the checkpoint, log and
validation periods may change.

The run folder's files, its lock and its logs: :mod:`~minimaskrcnn.training.run_folder`. A
fresh ``train`` into a folder that already holds a run is refused (:class:`RunFolderError`)
unless ``resume`` or ``overwrite`` (which first removes the old run's files). A resumed run cuts
the logs back to its checkpoint, removes temporary files of killed writes, and re-runs a
validation that was killed before its record was written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from minimaskrcnn.backend import device_module
from minimaskrcnn.checkpoint import config_from_checkpoint, load_checkpoint
from minimaskrcnn.config import Config, config_to_dict
from minimaskrcnn.data.loader import Stream, TrainBatches, sample_rng
from minimaskrcnn.distributed import (
    abort_on_error,
    balance_batch,
    bind_gradient_buffer,
    broadcast_parameters,
    check_parameters_equal,
    get_comm,
    split_batch,
)
from minimaskrcnn.model import LOSS_KEYS, build_model, upgrade_state_names
from minimaskrcnn.training.guard import (
    DIVERGED_PARAMETER,
    NonFiniteLossError,
    diverged_parameters,
    first_nonfinite_state,
    last_good,
)
from minimaskrcnn.training.optim import SGD, WarmupMultiStepLR
from minimaskrcnn.training.run_folder import RunFolder, RunFolderError
from minimaskrcnn.training.step import train_step
from minimaskrcnn.viz import plot_loss_curve

__all__ = ["LOSS_KEYS", "RESUME_FIXED_FIELDS", "NonFiniteLossError", "RunFolderError",
           "checkpoint_config", "train"]

RESUME_FIXED_FIELDS = ("seed", "batch_size", "crop_size", "hflip_prob", "vflip_prob", "base_lr",
                       "momentum", "weight_decay", "warmup_iters", "warmup_factor", "milestones",
                       "gamma")
"""``TrainConfig`` fields a resumed run must share with its checkpoint (with every
``ModelConfig`` field): they decide the data stream and the updates."""


def checkpoint_config(cfg: Config, dataset) -> dict:
    """The ``config`` a checkpoint stores: the Config's dict plus ``"dataset": {"category_ids",
    "class_names", "num_images"}`` (label k is COCO category ``category_ids[k - 1]``), which
    ``config_from_dict`` ignores, ``predict`` / ``evaluate`` use to name the classes and
    ``resume`` to check that it continues on the same data."""
    d = config_to_dict(cfg)
    d["dataset"] = {"category_ids": [int(c) for c in dataset.category_ids],
                    "class_names": list(dataset.class_names), "num_images": len(dataset)}
    if getattr(dataset, "num_keypoints", 0):  # predict draws the keypoints with the skeleton
        d["dataset"]["keypoint_names"] = list(dataset.keypoint_names)
        d["dataset"]["skeleton"] = [[int(a), int(b)] for a, b in dataset.skeleton]
    return d


def _check_resume_config(cfg: Config, dataset, ckpt_path: str) -> None:
    """Refuse a resume whose model, data stream or schedule differs from the checkpoint's."""
    ckpt = load_checkpoint(ckpt_path)
    stored = config_from_checkpoint(ckpt)
    hint = "resume with the run's value, or train into a new folder"
    for f in dataclasses.fields(stored.model):
        new, old = getattr(cfg.model, f.name), getattr(stored.model, f.name)
        if new != old:
            raise RunFolderError(f"{ckpt_path}: --resume with model.{f.name} {new!r}, but the "
                                 f"run was trained with {old!r}; {hint}")
    for name in RESUME_FIXED_FIELDS:
        new, old = getattr(cfg.train, name), getattr(stored.train, name)
        if new != old:
            raise RunFolderError(f"{ckpt_path}: --resume with train.{name} {new!r}, but the run "
                                 f"was trained with {old!r}; {hint}")
    stored_ds = ckpt.config.get("dataset") or {}
    ids = stored_ds.get("category_ids")
    if ids is not None and [int(c) for c in dataset.category_ids] != ids:
        raise RunFolderError(f"{ckpt_path}: --resume on a dataset with category ids "
                             f"{list(dataset.category_ids)}, but the run was trained on {ids}")
    n = stored_ds.get("num_images")
    if isinstance(n, int) and n != len(dataset):
        raise RunFolderError(f"{ckpt_path}: --resume on a dataset of {len(dataset)} images, but "
                             f"the run was trained on {n}")


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def train(cfg: Config, train_dataset, out_dir: str, *, evaluate: Callable | None = None,
          iterations: int | None = None, resume: bool = False, overwrite: bool = False,
          model_factory: Callable | None = None, progress: bool = True,
          on_validation: Callable | None = None, comm=None, device: str = "cpu") -> dict:
    """Train a Mask R-CNN on a COCO dataset, in one process or data-parallel over MPI ranks.

    Args:
        cfg: the :class:`~minimaskrcnn.config.Config` (``cfg.train``: batch, crop, schedule,
            seed, checkpoint/log/validation periods).
        train_dataset: a :class:`~minimaskrcnn.data.CocoDataset` (images without instances
            are not trained on).
        out_dir: the run folder (created; :mod:`~minimaskrcnn.training.run_folder`).
        evaluate: ``evaluate(model, comm=comm) -> metrics`` (a dict), called on every rank every
            ``cfg.train.val_every`` iterations and at the end, e.g.
            ``functools.partial(evaluation.evaluate_model, dataset=val_set,
            eval_cfg=cfg.eval, limit=8)``; None: no validation.
        iterations: total iterations of the run (default ``cfg.train.iterations``); with
            ``resume`` the run continues up to this number.
        resume: continue from the run folder's last checkpoint (exactly: same batches).
        overwrite: train afresh into a folder that holds another run, removing that run's
            checkpoints, logs and config first.
        model_factory: ``(cfg, rng) -> model`` (default :func:`minimaskrcnn.build_model`).
        progress: show the tqdm bar (loss, lr, images/s, ETA; its numbers refreshed every
            ``cfg.train.log_every`` iterations); without it, print one line every
            ``log_every`` iterations.
        on_validation: called with ``(iteration, metrics)`` after each validation (rank 0).
        comm: the data-parallel communicator (:mod:`minimaskrcnn.distributed`); default the
            process's: every rank of ``mpiexec -n W``, or one process.
        device: ``"cpu"`` (NumPy) or ``"cuda"`` (CuPy: the parameters, activations, gradients
            and momentum buffers live on the GPU; each batch is copied there once by the
            model; checkpoints are written as NumPy and load on either device).

    Returns:
        ``{"model", "iteration", "checkpoint", "log", "val" (list of ``{"iteration",
        **metrics}``), "seconds_per_iteration" (median over this call's iterations)}``.

    Raises:
        NonFiniteLossError: training diverged (the message names the iteration, the term and
            the last good checkpoint).
        RunFolderError: the folder holds another run (without ``resume``/``overwrite``),
            another training holds its lock, or ``resume`` changes the model, the data stream
            or the schedule (:data:`RESUME_FIXED_FIELDS`).
        FileNotFoundError: ``resume`` without a checkpoint in ``out_dir``.
        CheckpointError: the checkpoint to resume from is bad.
        ValueError: nothing to train on, a bad iteration count or period, ``resume`` with
            ``overwrite``, a batch size that the W ranks cannot share equally.
        TierUnavailableError: ``device="cuda"`` without CuPy and a CUDA GPU (one line).

    Under MPI any of these on one rank stops every rank (the message on stderr, prefixed
    ``[rank r]``; ``abort_on_error``) instead of leaving the others waiting.
    """
    comm = get_comm() if comm is None else comm
    with abort_on_error(comm):
        xp = device_module(device)  # before any work: a missing GPU is one line
        tc = cfg.train
        total = int(tc.iterations if iterations is None else iterations)
        if total < 1:
            raise ValueError(f"iterations must be >= 1, got {total}")
        for name in ("checkpoint_every", "val_every", "log_every"):
            value = getattr(tc, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"train.{name} must be an integer >= 1, got {value!r}")
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other")
        ks = split_batch(tc.batch_size, comm)  # checks B and W; each batch: balance_batch
        folder = RunFolder(out_dir)
        if comm.is_main:
            os.makedirs(out_dir, exist_ok=True)
        comm.barrier()
        with folder.lock() if comm.is_main else contextlib.nullcontext():  # rank 0 owns it
            last = _prepare_folder(folder, cfg, train_dataset, resume=resume,
                                   overwrite=overwrite, comm=comm)
            batches = TrainBatches.from_config(train_dataset, tc,
                                               image_scale=cfg.model.image_scale)
            run = _Run(cfg, folder, comm, *_build(cfg, model_factory or build_model, xp),
                       evaluate=evaluate, on_validation=on_validation,
                       config_dict=checkpoint_config(cfg, train_dataset), last_checkpoint=last)
            start = _resume(run) if resume else 0
            if comm.size > 1 and resume:  # the same checkpoint name, but is it the same file?
                starts = comm.allgather(start)
                if len(set(starts)) > 1:
                    raise ValueError(f"{last} holds iteration {start} on this rank, but "
                                     f"{starts[0]} on rank 0")
            if comm.size > 1:  # one model: rank 0's parameters everywhere, checked by checksum
                broadcast_parameters(run.model, comm)
                check_parameters_equal(run.model, comm)
                if xp is np:
                    bind_gradient_buffer(run.model, comm)  # gradients in the allreduce's buffer
            if comm.is_main:
                folder.write_config(run.config_dict)
            if resume and _validation_was_killed(run, start, total):
                line = _validation_line(start, _validate(run, start))
                if comm.is_main:
                    print(line + " (the validation a killed run did not finish)")
            seconds = _train_iterations(run, batches, ks, start, total, progress)
            if comm.size > 1:
                check_parameters_equal(run.model, comm)  # the ranks still hold one model
            if comm.is_main:
                plot_loss_curve(folder.read_log(), folder.curve_path, val_records=run.vals)
    return {"model": run.model, "iteration": max(start, total), "checkpoint": run.last_checkpoint,
            "log": folder.log_path, "val": run.vals,
            "seconds_per_iteration": float(np.median(seconds)) if seconds else None}


@dataclass
class _Run:
    """What the loop's steps share: the settings, the folder, the model and its optimiser, and
    the state that changes (the last good checkpoint, the validations so far)."""

    cfg: Config
    folder: RunFolder
    comm: object
    model: object
    optimizer: SGD
    scheduler: WarmupMultiStepLR
    evaluate: Callable | None
    on_validation: Callable | None
    config_dict: dict
    last_checkpoint: str | None = None
    vals: list[dict] = field(default_factory=list)


def _prepare_folder(folder: RunFolder, cfg: Config, dataset, *, resume: bool, overwrite: bool,
                    comm) -> str | None:
    """Remove what killed writes left (rank 0), check a resume against its checkpoint, or refuse
    / clear a folder that holds another run. Returns the checkpoint to resume from (None for a
    fresh run)."""
    if comm.is_main:
        folder.remove_temporary_files()
    last = None
    if resume:  # rank 0 decides the checkpoint (each rank may read its own copy of the folder)
        last = folder.last_checkpoint() if comm.is_main else None
        if comm.size > 1:
            name = comm.bcast(None if last is None else os.path.basename(last))
            last = None if name is None else os.path.join(folder.path, name)
        if last is None:
            raise FileNotFoundError(f"{folder.path}: no checkpoint to resume from "
                                    f"({os.path.basename(folder.last_path)} missing)")
        if not os.path.isfile(last):
            raise FileNotFoundError(f"{last}: rank 0 resumes from it, but this rank has no such "
                                    "file")
        _check_resume_config(cfg, dataset, last)
    elif comm.is_main:
        existing = folder.run_files()
        if existing and not overwrite:
            raise RunFolderError(
                f"{folder.path} already holds a run ({', '.join(existing[:4])}"
                f"{', ...' if len(existing) > 4 else ''}); continue it with --resume, replace "
                f"it with --overwrite, or choose another folder")
        folder.remove_run()
    comm.barrier()
    return last


def _build(cfg: Config, model_factory: Callable, xp) -> tuple:
    """``(model, optimizer, scheduler)``: the model from stream ``MODEL_INIT`` on the device of
    ``xp``, :class:`SGD` and :class:`WarmupMultiStepLR` as ``cfg.train`` says."""
    tc = cfg.train
    model = model_factory(cfg, sample_rng(tc.seed, Stream.MODEL_INIT, 0))
    if xp is not np:
        model.to(xp)  # parameters and gradients on the device; the SGD's buffers follow them
    optimizer = SGD(model.named_parameters(), lr=tc.base_lr, momentum=tc.momentum,
                    weight_decay=tc.weight_decay)
    scheduler = WarmupMultiStepLR(optimizer, milestones=tc.milestones, gamma=tc.gamma,
                                  warmup_factor=tc.warmup_factor, warmup_iters=tc.warmup_iters)
    return model, optimizer, scheduler


def _resume(run: _Run) -> int:
    """Load the last checkpoint into the model and optimiser (every rank reads it), set the
    schedule to its iteration and cut the logs back to it (rank 0); returns the iteration."""
    ckpt = load_checkpoint(run.last_checkpoint, run.model, optimizer=run.optimizer,
                           upgrade_names=upgrade_state_names)
    start = int(ckpt["iteration"])
    run.scheduler.last_iter = start  # also sets optimizer.lr to the lr of iteration `start`
    vals = run.folder.truncate_logs(start) if run.comm.is_main else []
    run.vals = run.comm.bcast(vals)  # the validations at or before `start`
    return start


def _validation_was_killed(run: _Run, start: int, total: int) -> bool:
    """A resumed run's checkpoint at ``start`` whose validation has no record: killed after the
    checkpoint was written. (A checkpoint off the checkpoint period was the end of an earlier
    call, which validates too.)"""
    tc = run.cfg.train
    return (run.evaluate is not None and start > 0
            and all(v.get("iteration") != start for v in run.vals)
            and (start % tc.val_every == 0 or start % tc.checkpoint_every != 0 or start == total))


def _train_iterations(run: _Run, batches: TrainBatches, ks: list[int], start: int, total: int,
                      progress: bool) -> list[float]:
    """Iterations ``start .. total - 1``: a train step each, its log record, and the
    checkpoints and validations that fall due. Returns the seconds of each iteration."""
    tc, main = run.cfg.train, run.comm.is_main
    seconds = []
    bar = tqdm(range(start, total), initial=start, total=total, desc="train", unit="it",
               disable=not (progress and main), dynamic_ncols=True)
    with open(run.folder.log_path if main else os.devnull, "a", encoding="utf-8") as log:
        for t in bar:
            t0, c0 = time.perf_counter(), time.process_time()
            lr = run.scheduler.get_lr()
            if run.comm.size > 1:  # this rank's crops, dealt by their instances
                ks = balance_batch(batches.instance_counts(t), run.comm)
            batch = batches.batch(t, ks)
            rngs = [sample_rng(tc.seed, Stream.SAMPLING, p) for p in batches.positions(t, ks)]
            try:
                losses, loss = train_step(
                    run.model, run.optimizer, [b[0] for b in batch], [b[1] for b in batch],
                    rngs, iteration=t, comm=run.comm, last_checkpoint=run.last_checkpoint,
                    refusal_is_divergence=t > start)  # a call's first step: a bad input or bug
            except NonFiniteLossError as e:  # leave the bad values in the log, then stop
                _write_record(log, {"iteration": t, "lr": lr, **(e.losses or {}),
                                    "error": str(e)})
                raise
            run.scheduler.step()
            dt = time.perf_counter() - t0
            seconds.append(dt)
            _write_record(log, {"iteration": t, "lr": lr,
                                **{k: float(v) for k, v in losses.items()}, "loss": loss,
                                "seconds": dt, "cpu_seconds": time.process_time() - c0,
                                "images_per_s": tc.batch_size / dt})
            done = t + 1
            if done % tc.log_every == 0 or done == total:
                if progress:
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}",
                                    img_s=f"{tc.batch_size / dt:.2f}", refresh=False)
                elif main:
                    terms = ", ".join(f"{k[5:]} {float(v):.3f}" for k, v in losses.items())
                    print(f"iteration {done}/{total}: loss {loss:.3f} ({terms}), lr {lr:.2e}, "
                          f"{tc.batch_size / dt:.2f} img/s", flush=True)
            if done % tc.checkpoint_every == 0 or done == total:
                try:
                    _save(run, done)
                except NonFiniteLossError as e:  # a diverging state: in the log, then stop
                    _write_record(log, {"iteration": done, "lr": lr, "error": str(e)})
                    raise
            if run.evaluate is not None and (done % tc.val_every == 0 or done == total):
                line = _validation_line(done, _validate(run, done))
                if main:
                    bar.write(line)
    bar.close()
    return seconds


def _write_record(log, record: dict) -> None:
    log.write(json.dumps(record) + "\n")
    log.flush()


def _save(run: _Run, iteration: int) -> None:
    """Rank 0 writes ``checkpoint_<iteration>.npz`` and points ``last_checkpoint`` at it (never
    a diverged state); every rank takes it as the last good checkpoint."""
    if not run.comm.is_main:
        run.last_checkpoint = run.folder.checkpoint_path(iteration)
        return
    bad = first_nonfinite_state(run.model, run.optimizer)
    if bad is not None:  # the guard stops before this; never store a diverged state
        raise NonFiniteLossError(f"iteration {iteration}: {bad} is not finite; not saving a "
                                 f"checkpoint")
    huge = diverged_parameters(run.model)
    if huge is not None:  # finite but diverging: resuming from it would fail at once
        raise NonFiniteLossError(f"iteration {iteration}: training is diverging ({huge}, over "
                                 f"{DIVERGED_PARAMETER:g}); training stopped, not saving a "
                                 f"checkpoint, {last_good(run.last_checkpoint)}")
    rng_state = {"seed": int(run.cfg.train.seed), "next_iteration": int(iteration),
                 "streams": Stream.describe()}
    run.last_checkpoint = run.folder.save_checkpoint(run.model, run.optimizer, iteration,
                                                     run.config_dict, rng_state)


def _validate(run: _Run, iteration: int) -> dict:
    """``run.evaluate`` on every rank; rank 0 appends the record to ``val.jsonl`` and calls
    ``on_validation``. Returns the metrics (without ``_results``)."""
    metrics = run.evaluate(run.model, comm=run.comm)
    metrics = {k: v for k, v in metrics.items() if k != "_results"}
    record = {"iteration": iteration, **metrics}
    run.vals.append(record)
    if run.comm.is_main:
        run.folder.append_val(record)
        if run.on_validation is not None:
            run.on_validation(iteration, metrics)
    return metrics


def _validation_line(iteration: int, m: dict) -> str:
    """``"iteration 300: val mask AP 0.180, box AP 0.153, DSB 0.159"``."""
    parts = [f"{name} AP {m[kind]['AP']:.3f}" for kind, name in
             (("segm", "mask"), ("bbox", "box"), ("keypoints", "keypoint")) if kind in m]
    if "dsb_score" in m:
        parts.append(f"DSB {m['dsb_score']:.3f}")
    return f"iteration {iteration}: val " + ", ".join(parts)
