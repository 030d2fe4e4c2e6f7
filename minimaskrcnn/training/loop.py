"""The training loop: seeded batches, SGD with warm-up and steps, logs, checkpoints, resume,
a divergence guard, periodic validation and a loss curve.

One iteration ``t`` (0-based), on each of W data-parallel ranks (W = 1 without ``mpiexec``)::

    ks     = split_batch(batch_size, comm)              # this rank's images of every batch
    batch  = TrainBatches.batch(t, ks)                  # crops of rng([seed, 1, sample p])
    _, losses, cache = model.forward_train(images, targets, [rng([seed, 2, p]) for each p],
                                           sum_counts=allreduce_sum)   # normalisers: global
    losses = allreduce_sum(losses)                      # W > 1: the batch's loss terms
    guard: every loss term finite
    model.zero_grad(); model.backward(None, cache)      # this rank's share of the gradient
    allreduce_gradients(model)                          # W > 1: one fused allreduce (sum)
    guard: every gradient finite
    optimizer.step() at lr(t) (linear warm-up, x gamma at each milestone); scheduler.step()
    guard: every parameter and momentum buffer finite

Data parallelism (MPI, :mod:`minimaskrcnn.distributed`; launch with
``mpiexec -n W minimaskrcnn train ...``): every rank holds the whole model (broadcast from rank
0 at the start and checked equal by checksum), runs its contiguous share of every global batch,
and applies the same SGD step to the summed gradient. Each image's crops and samples are drawn
from streams keyed by its sample number, and the loss normalisers (sampled anchors, sampled
RoIs, foreground RoIs) are summed over the ranks before dividing, so W ranks compute the
gradient of one process up to float summation order, and a run may resume with another W.
Rank 0 alone writes the run folder and shows the progress bar; validation shares the images
among the ranks. An exception on any rank stops the whole job (``abort_on_error``), leaving the
last good checkpoint as it is.

The guard stops the run with :class:`NonFiniteLossError` naming the iteration, the term (loss,
gradient, parameter or momentum buffer) and the last good checkpoint, and logs the iteration
with an ``error`` field; an op that refuses the values a diverging model gives it (a ValueError
from an input check, as a huge learning rate causes) is reported the same way. Nothing is
written over the last checkpoint, and no checkpoint is written with non-finite values.

Every random draw is a function of ``(seed, sample number)`` (:mod:`minimaskrcnn.data.loader`), so the
data RNG state a checkpoint needs is just ``seed`` and the iteration: ``resume=True`` reloads
the parameters, the optimiser's momentum buffers and the iteration, and continues with exactly
the batches, crops and samples of the uninterrupted run. Resuming refuses a config whose
model, data stream (seed, batch size, crop size, flips) or optimiser schedule differs from the
checkpoint's (:data:`RESUME_FIXED_FIELDS`); the iterations and the checkpoint, log and
validation periods may change.

Files in the run folder ``out_dir``:
    config.json                     the Config (JSON) and the class names (checkpoint_config)
    log.jsonl                       one JSON line per iteration: iteration, lr, the five loss
                                    terms, loss (their sum), seconds (wall clock),
                                    cpu_seconds (all threads of the process), images_per_s
    val.jsonl                       one line per validation: iteration and the metrics
    checkpoint_<iteration>.npz      every ``checkpoint_every`` iterations and at the end
                                    (``<iteration>`` = iterations done, 6 digits)
    last_checkpoint                 the name of the newest checkpoint (what resume loads)
    loss_curve.png                  the loss terms against the iteration
    train.lock                      locked (``fcntl.flock``) while a training runs, holds its
                                    pid; the kernel drops the lock when the process dies, so a
                                    lock left by a killed run is simply taken over

A fresh ``train`` into a folder that already holds a run is refused (:class:`RunFolderError`)
unless ``resume`` or ``overwrite`` (which first removes the old run's files). A resumed run
cuts the logs back to its checkpoint (atomically: a new file replaces the old), drops a torn
last line (a kill in the middle of a write) with a warning, removes temporary files of killed
checkpoint writes, and re-runs a validation that was killed before its record was written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import math
import os
import time
import warnings
from collections.abc import Callable

import numpy as np

from minimaskrcnn.backend import device_module, get_array_module
from minimaskrcnn.config import Config, config_to_dict
from minimaskrcnn.data.loader import TrainBatches, sample_rng
from minimaskrcnn.distributed import (
    abort_on_error,
    allreduce_gradients,
    allreduce_sum,
    bind_gradient_buffer,
    broadcast_parameters,
    check_parameters_equal,
    get_comm,
    split_batch,
)
from minimaskrcnn.model import LOSS_KEYS, upgrade_state_names

__all__ = ["LOSS_KEYS", "RESUME_FIXED_FIELDS", "NonFiniteLossError", "RunFolderError",
           "checkpoint_config", "find_last_checkpoint", "stored_config", "train"]


LOG_FILE = "log.jsonl"
VAL_FILE = "val.jsonl"
CONFIG_FILE = "config.json"
LAST_FILE = "last_checkpoint"
CURVE_FILE = "loss_curve.png"
LOCK_FILE = "train.lock"
RUN_FILES = (CONFIG_FILE, LAST_FILE, LOG_FILE, VAL_FILE)
"""Any of these (or a ``checkpoint_*.npz``) means the folder holds a run."""

RESUME_FIXED_FIELDS = ("seed", "batch_size", "crop_size", "hflip_prob", "vflip_prob", "base_lr",
                       "momentum", "weight_decay", "warmup_iters", "warmup_factor", "milestones",
                       "gamma")
"""``TrainConfig`` fields a resumed run must share with its checkpoint (with every
``ModelConfig`` field): they decide the data stream and the updates."""

MODEL_INIT_STREAM = 3
"""Stream number of the model's initial weights: ``rng([seed, 3, 0])``."""


class NonFiniteLossError(RuntimeError):
    """Training diverged: a loss term, a gradient, an updated parameter or momentum buffer
    became NaN or inf, or an op refused the values the model gave it. The message names the
    iteration, the term and the last good checkpoint."""


class RunFolderError(RuntimeError):
    """The run folder cannot be trained into: it holds another run (and neither ``resume`` nor
    ``overwrite`` was given), another training holds its lock, or a resume changes a setting
    that must stay fixed. The message names the folder or file and the setting."""


# --------------------------------------------------------------------------------------------
# Checkpoint files (format: minimaskrcnn.checkpoint)
# --------------------------------------------------------------------------------------------


def checkpoint_name(iteration: int) -> str:
    return f"checkpoint_{iteration:06d}.npz"


def find_last_checkpoint(out_dir: str) -> str | None:
    """Path of the newest checkpoint of a run folder (``last_checkpoint``), or None.

    Raises:
        FileNotFoundError: ``last_checkpoint`` names a file that does not exist.
    """
    path = os.path.join(out_dir, LAST_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        name = f.read().strip()
    ckpt = os.path.join(out_dir, name)
    if not name or os.sep in name or not os.path.isfile(ckpt):
        raise FileNotFoundError(f"{path} names {name!r}, which does not exist")
    return ckpt


def stored_config(out_dir: str) -> Config | None:
    """The Config of a run folder's last checkpoint (checked), or None without a checkpoint.

    Raises:
        CheckpointError: the checkpoint or its config is bad (one line naming the file).
    """
    from minimaskrcnn.checkpoint import config_from_checkpoint, load_checkpoint

    path = find_last_checkpoint(out_dir)
    return None if path is None else config_from_checkpoint(load_checkpoint(path))


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


def _write_atomic(path: str, text: str) -> None:
    """Write a text file by a temporary file and ``os.replace`` (a kill leaves the old or the
    new file, never a truncated one)."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _first_nonfinite(named_arrays) -> str | None:
    """The name of the first array holding NaN or inf, or None. On a GPU one host
    synchronisation for all of them (a per-array ``bool`` would wait on each)."""
    named = [(n, a) for n, a in named_arrays if a is not None and a.size]
    if not named:
        return None
    xp = get_array_module(named[0][1])
    if bool(xp.stack([xp.isfinite(a).all() for _, a in named]).all()):
        return None
    return next(n for n, a in named if not bool(xp.isfinite(a).all()))


def _all_finite(model, optimizer) -> str | None:
    """The first parameter or momentum buffer that is not finite, named, or None."""
    bad = _first_nonfinite((f"parameter {n}", p.data) for n, p in model.named_parameters())
    if bad is None:
        bad = _first_nonfinite((f"the momentum buffer of {n}", b)
                               for n, b in zip(optimizer.names, optimizer.buffers, strict=True))
    return bad


def _save(out_dir: str, model, optimizer, iteration: int, cfg: Config, config_dict: dict) -> str:
    from minimaskrcnn.checkpoint import save_checkpoint

    bad = _all_finite(model, optimizer)
    if bad is not None:  # the guard stops before this; never store a diverged state
        raise NonFiniteLossError(f"iteration {iteration}: {bad} is not finite; not saving a "
                                 f"checkpoint")
    path = os.path.join(out_dir, checkpoint_name(iteration))
    rng_state = {"seed": int(cfg.train.seed), "next_iteration": int(iteration),
                 "streams": "np.random.default_rng([seed, stream, counter]); stream 0 data "
                            "order (counter epoch), 1 crops (counter sample), 2 model "
                            "sampling (counter iteration)"}
    save_checkpoint(path, model, optimizer=optimizer, iteration=iteration,
                    config=config_dict, rng_state=rng_state)
    _write_atomic(os.path.join(out_dir, LAST_FILE), os.path.basename(path) + "\n")
    return path


def _load(path: str, model, optimizer) -> int:
    from minimaskrcnn.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, model, optimizer=optimizer, upgrade_names=upgrade_state_names)
    return int(ckpt["iteration"])


def _check_resume_config(cfg: Config, dataset, ckpt_path: str) -> None:
    """Refuse a resume whose model, data stream or schedule differs from the checkpoint's."""
    from minimaskrcnn.checkpoint import config_from_checkpoint, load_checkpoint

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


@contextlib.contextmanager
def _run_lock(out_dir: str):
    """Hold ``train.lock`` of a run folder for the duration (exclusive ``flock``, released by
    the kernel if the process dies, so a stale lock of a dead process is taken over).

    Raises:
        RunFolderError: another process holds it.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux/macOS: no lock
        yield
        return
    path = os.path.join(out_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            raise RunFolderError(f"{out_dir}: another training (pid {holder}) is running in this "
                                 f"folder (it holds {path})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _holds_run(out_dir: str) -> list[str]:
    names = [n for n in RUN_FILES if os.path.exists(os.path.join(out_dir, n))]
    return names + sorted(os.path.basename(p) for p in glob.glob(os.path.join(out_dir, "checkpoint_*.npz")))


def _remove_run(out_dir: str) -> None:
    for name in (*_holds_run(out_dir), CURVE_FILE):
        path = os.path.join(out_dir, name)
        if os.path.exists(path):
            os.remove(path)


def _remove_temporary_files(out_dir: str) -> None:
    from minimaskrcnn.checkpoint import remove_temporary_files

    remove_temporary_files(out_dir)
    for name in (LAST_FILE, LOG_FILE, VAL_FILE, CONFIG_FILE):
        tmp = os.path.join(out_dir, name + ".tmp")
        if os.path.exists(tmp):
            os.remove(tmp)


# --------------------------------------------------------------------------------------------
# Logs
# --------------------------------------------------------------------------------------------


def _read_jsonl(path: str) -> list[dict]:
    """The records of a JSON-lines log. A torn last line (a kill in the middle of a write) is
    dropped with a warning.

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


def _truncate_log(path: str, iteration: int) -> list[dict]:
    """Keep the records of iterations before ``iteration`` (a resumed run rewrites the rest);
    the file is replaced atomically."""
    records = [r for r in _read_jsonl(path) if _iteration_of(r) < iteration]
    if os.path.exists(path):
        _write_atomic(path, "".join(json.dumps(r) + "\n" for r in records))
    return records


def _keep(last_ckpt: str | None) -> str:
    return f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"


def _finite_or_raise(losses: dict, iteration: int, last_ckpt: str | None,
                     keys=LOSS_KEYS) -> float:
    missing = [k for k in keys if k not in losses]
    if missing:
        raise ValueError(f"model.forward_train returned no {missing}")
    for k, v in losses.items():
        if not math.isfinite(float(v)):
            raise NonFiniteLossError(
                f"iteration {iteration}: loss term {k} is {float(v)}; training stopped before the "
                f"update, {_keep(last_ckpt)}")
    return float(sum(float(v) for v in losses.values()))


def _check_grads(model, iteration: int, last_ckpt: str | None) -> None:
    name = _first_nonfinite((n, p.grad) for n, p in model.named_parameters())
    if name is not None:
        raise NonFiniteLossError(
            f"iteration {iteration}: the gradient of {name} is not finite; training "
            f"stopped before the update, {_keep(last_ckpt)}")


def _check_update(model, optimizer, iteration: int, lr: float, last_ckpt: str | None) -> None:
    bad = _all_finite(model, optimizer)
    if bad is not None:
        raise NonFiniteLossError(
            f"iteration {iteration}: after the update (lr {lr:.3g}) {bad} is not finite; "
            f"training stopped, nothing saved, {_keep(last_ckpt)}")


def _largest_parameter(model) -> str:
    name, value = max(((n, float(get_array_module(p.data).abs(p.data).max()) if p.data.size else 0.0)
                       for n, p in model.named_parameters()), key=lambda x: x[1], default=("-", 0.0))
    return f"largest |parameter| {value:.3g} ({name})"


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def train(cfg: Config, train_dataset, out_dir: str, *, val_dataset=None,
          iterations: int | None = None, resume: bool = False, overwrite: bool = False,
          model_factory: Callable | None = None, val_limit: int | None = None,
          progress: bool = True, on_validation: Callable | None = None, comm=None,
          device: str = "cpu") -> dict:
    """Train a Mask R-CNN on a COCO dataset, in one process or data-parallel over MPI ranks.

    Args:
        cfg: the :class:`~minimaskrcnn.config.Config` (``cfg.train``: batch, crop, schedule,
            seed, checkpoint/log/validation periods; ``cfg.eval`` for validation).
        train_dataset: a :class:`~minimaskrcnn.data.CocoDataset` (images without instances
            are not trained on).
        out_dir: the run folder (created; see the module docstring for its files).
        val_dataset: optional ``CocoDataset`` evaluated every ``cfg.train.val_every``
            iterations and at the end.
        iterations: total iterations of the run (default ``cfg.train.iterations``); with
            ``resume`` the run continues up to this number.
        resume: continue from the run folder's last checkpoint (exactly: same batches).
        overwrite: train afresh into a folder that holds another run, removing that run's
            checkpoints, logs and config first.
        model_factory: ``(cfg, rng) -> model`` (default :func:`minimaskrcnn.build_model`).
        val_limit: validate on the first ``val_limit`` images only.
        progress: show the tqdm bar (loss, lr, images/s, ETA; its numbers refreshed every
            ``cfg.train.log_every`` iterations); without it, print one line every
            ``log_every`` iterations.
        on_validation: called with ``(iteration, metrics)`` after each validation (rank 0).
        comm: the data-parallel communicator (:mod:`minimaskrcnn.distributed`);
            default the process's: every rank of ``mpiexec -n W``, or one process.
        device: ``"cpu"`` (NumPy) or ``"cuda"`` (CuPy: the parameters, activations, gradients
            and momentum buffers live on the GPU; each batch is copied there once by the
            model; checkpoints are written as NumPy and load on either device).

    Returns:
        ``{"model", "iteration", "checkpoint", "log", "val" (list of metrics), "seconds_per_iteration"
        (median over this call's iterations)}``.

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
        return _train(cfg, train_dataset, out_dir, val_dataset=val_dataset,
                      iterations=iterations, resume=resume, overwrite=overwrite,
                      model_factory=model_factory, val_limit=val_limit, progress=progress,
                      on_validation=on_validation, comm=comm, xp=xp)


def _train(cfg, train_dataset, out_dir, *, val_dataset, iterations, resume, overwrite,
           model_factory, val_limit, progress, on_validation, comm, xp) -> dict:
    tc = cfg.train
    total = int(tc.iterations if iterations is None else iterations)
    if total < 1:
        raise ValueError(f"iterations must be >= 1, got {total}")
    for name in ("checkpoint_every", "val_every", "log_every"):
        value = getattr(tc, name)
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"train.{name} must be an integer >= 1, got {value!r}")
    if val_limit is not None and val_limit < 1:
        raise ValueError(f"val_limit must be >= 1, got {val_limit}")
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    ks = split_batch(tc.batch_size, comm)  # this rank's images of every batch
    if comm.is_main:
        os.makedirs(out_dir, exist_ok=True)
    comm.barrier()
    with _run_lock(out_dir) if comm.is_main else contextlib.nullcontext():  # rank 0 owns the folder
        return _train_locked(cfg, train_dataset, out_dir, total, ks, val_dataset=val_dataset,
                             resume=resume, overwrite=overwrite, model_factory=model_factory,
                             val_limit=val_limit, progress=progress, on_validation=on_validation,
                             comm=comm, xp=xp)


def _train_locked(cfg, train_dataset, out_dir, total, ks, *, val_dataset, resume, overwrite,
                  model_factory, val_limit, progress, on_validation, comm, xp) -> dict:
    """:func:`train` once the run folder's lock is held (by rank 0)."""
    from tqdm import tqdm

    from minimaskrcnn.training.optim import SGD, WarmupMultiStepLR

    tc = cfg.train
    main, distributed = comm.is_main, comm.size > 1
    log_path = os.path.join(out_dir, LOG_FILE)
    if main:
        _remove_temporary_files(out_dir)
    last_ckpt = find_last_checkpoint(out_dir) if resume else None
    if resume:
        if last_ckpt is None:
            raise FileNotFoundError(f"{out_dir}: no checkpoint to resume from ({LAST_FILE} missing)")
        _check_resume_config(cfg, train_dataset, last_ckpt)
    elif main:
        existing = _holds_run(out_dir)
        if existing and not overwrite:
            raise RunFolderError(
                f"{out_dir} already holds a run ({', '.join(existing[:4])}"
                f"{', ...' if len(existing) > 4 else ''}); continue it with --resume, replace "
                f"it with --overwrite, or choose another folder")
        _remove_run(out_dir)
    comm.barrier()

    if model_factory is None:
        from minimaskrcnn import build_model as model_factory
    batches = TrainBatches.from_config(train_dataset, tc, image_scale=cfg.model.image_scale)
    model = model_factory(cfg, sample_rng(tc.seed, MODEL_INIT_STREAM, 0))
    if xp is not np:
        model.to(xp)  # parameters and gradients on the device; the SGD's buffers follow them
    optimizer = SGD(model.named_parameters(), lr=tc.base_lr, momentum=tc.momentum,
                    weight_decay=tc.weight_decay)
    scheduler = WarmupMultiStepLR(optimizer, milestones=tc.milestones, gamma=tc.gamma,
                                  warmup_factor=tc.warmup_factor, warmup_iters=tc.warmup_iters)

    start = 0
    vals: list[dict] = []
    if resume:
        start = _load(last_ckpt, model, optimizer)  # every rank reads the same checkpoint
        scheduler.last_iter = start  # also sets optimizer.lr to the lr of iteration `start`
        if main:
            _truncate_log(log_path, start)
            vals = _truncate_log(os.path.join(out_dir, VAL_FILE), start + 1)  # validations <= start
        vals = comm.bcast(vals)
    if distributed:  # one model: rank 0's parameters everywhere, checked by checksum
        broadcast_parameters(model, comm)
        check_parameters_equal(model, comm)
        if xp is np:
            bind_gradient_buffer(model, comm)  # gradients live in the allreduce's flat buffer
    ckpt_config = checkpoint_config(cfg, train_dataset)
    if main:
        _write_atomic(os.path.join(out_dir, CONFIG_FILE), json.dumps(ckpt_config, indent=2))
    counts = (lambda c: allreduce_sum(c, comm)) if distributed else None  # loss normalisers

    def validate(iteration):
        from minimaskrcnn.evaluation import evaluate_model

        metrics = evaluate_model(model, val_dataset, cfg.eval, limit=val_limit, comm=comm)
        metrics.pop("_results", None)
        record = {"iteration": iteration, **metrics}
        vals.append(record)
        if main:
            with open(os.path.join(out_dir, VAL_FILE), "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            if on_validation is not None:
                on_validation(iteration, metrics)
        return metrics

    def report(done, m):
        parts = [f"{name} AP {m[kind]['AP']:.3f}" for kind, name in
                 (("segm", "mask"), ("bbox", "box"), ("keypoints", "keypoint")) if kind in m]
        if "dsb_score" in m:
            parts.append(f"DSB {m['dsb_score']:.3f}")
        return f"iteration {done}: val " + ", ".join(parts)

    # A validation that was killed after its checkpoint was written: run it now. (A checkpoint
    # off the checkpoint period was the end of an earlier call, which validates too.)
    if (resume and val_dataset is not None and start > 0
            and all(v.get("iteration") != start for v in vals)
            and (start % tc.val_every == 0 or start % tc.checkpoint_every != 0 or start == total)):
        m = validate(start)
        if main:
            print(report(start, m) + " (the validation a killed run did not finish)")

    seconds = []
    bar = tqdm(range(start, total), initial=start, total=total, desc="train", unit="it",
               disable=not (progress and main), dynamic_ncols=True)
    with open(log_path if main else os.devnull, "a", encoding="utf-8") as log:

        def stop(t, lr, losses, error, cause=None):  # log the failed iteration, then raise
            log.write(json.dumps({"iteration": t, "lr": lr,
                                  **{k: float(v) for k, v in (losses or {}).items()},
                                  "error": str(error)}) + "\n")
            log.flush()
            if cause is not None:
                raise error from cause
            raise error

        for t in bar:
            t0, c0 = time.perf_counter(), time.process_time()
            lr = scheduler.get_lr()
            batch = batches.batch(t, ks)
            images = [b[0] for b in batch]
            targets = [b[1] for b in batch]
            rngs = [sample_rng(tc.seed, 2, p) for p in batches.positions(t, ks)]  # per image
            losses = None
            try:
                # NumPy's overflow / invalid warnings are left out: the guard checks every
                # loss, gradient, parameter and buffer itself and stops with one message
                with np.errstate(over="ignore", invalid="ignore"):
                    if counts is None:
                        _, losses, cache = model.forward_train(images, targets, rngs)
                    else:
                        _, losses, cache = model.forward_train(images, targets, rngs,
                                                               sum_counts=counts)
                        losses = allreduce_sum(losses, comm)  # each rank held its share
                    loss = _finite_or_raise(losses, t, last_ckpt,
                                            getattr(model, "loss_keys", LOSS_KEYS))
                    model.zero_grad()
                    model.backward(None, cache)
                    del cache
                    if distributed:
                        allreduce_gradients(model, comm)  # one fused allreduce: the sum
                    _check_grads(model, t, last_ckpt)
                    optimizer.step()
                    _check_update(model, optimizer, t, lr, last_ckpt)
            except NonFiniteLossError as e:  # leave the bad values in the log, then stop
                stop(t, lr, losses, e)
            except (ValueError, FloatingPointError, OverflowError) as e:
                if t == start:  # the first iteration of a call: a bad input or a bug, not a
                    raise       # divergence (the parameters are a checkpoint's or initial)
                stage = "model.forward_train" if losses is None else "model.backward"
                stop(t, lr, losses, NonFiniteLossError(
                    f"iteration {t}: {stage} failed ({type(e).__name__}: {e}); at lr {lr:.3g} "
                    f"the model may have diverged ({_largest_parameter(model)}); training "
                    f"stopped, {_keep(last_ckpt)}"), cause=e)
            scheduler.step()
            dt = time.perf_counter() - t0
            seconds.append(dt)
            record = {"iteration": t, "lr": lr, **{k: float(v) for k, v in losses.items()},
                      "loss": loss, "seconds": dt, "cpu_seconds": time.process_time() - c0,
                      "images_per_s": tc.batch_size / dt}
            log.write(json.dumps(record) + "\n")
            log.flush()
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
                if main:
                    last_ckpt = _save(out_dir, model, optimizer, done, cfg, ckpt_config)
                else:
                    last_ckpt = os.path.join(out_dir, checkpoint_name(done))
            if val_dataset is not None and (done % tc.val_every == 0 or done == total):
                m = validate(done)
                if main:
                    bar.write(report(done, m))
    bar.close()
    if distributed:
        check_parameters_equal(model, comm)  # the ranks still hold one model

    if main:
        from minimaskrcnn.viz import plot_loss_curve

        plot_loss_curve(_read_jsonl(log_path), os.path.join(out_dir, CURVE_FILE),
                        val_records=vals)
    return {"model": model, "iteration": max(start, total), "checkpoint": last_ckpt, "log": log_path,
            "val": vals, "seconds_per_iteration": float(np.median(seconds)) if seconds else None}
