"""The training loop: seeded batches, SGD with warm-up and steps, logs, checkpoints, resume,
a non-finite-loss guard, periodic validation and a loss curve.

One iteration ``t`` (0-based)::

    batch  = TrainBatches.batch(t)                      # crops of rng([seed, 1, sample])
    losses, cache = model.forward_train(images, targets, rng([seed, 2, t]))
    guard: every loss term finite, else stop (nothing is written over the last checkpoint)
    model.zero_grad(); model.backward(cache)            # grads of the plain sum of the 5 terms
    guard: every gradient finite, else stop
    optimizer.step() at lr(t) (linear warm-up, x gamma at each milestone); scheduler.step()

Every random draw is a function of ``(seed, t)`` (see :mod:`minimaskrcnn.data.loader`), so the
data RNG state a checkpoint needs is just ``seed`` and the iteration: ``resume=True`` reloads
the parameters, the optimiser's momentum buffers and the iteration, and continues with exactly
the batches, crops and samples of the uninterrupted run.

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
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable

import numpy as np

from minimaskrcnn.config import Config, config_to_dict
from minimaskrcnn.data.loader import TrainBatches, sample_rng

__all__ = ["LOSS_KEYS", "NonFiniteLossError", "checkpoint_config", "find_last_checkpoint", "train"]

LOSS_KEYS = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")
"""torchvision's names of the five Mask R-CNN losses (total = their plain sum)."""

LOG_FILE = "log.jsonl"
VAL_FILE = "val.jsonl"
CONFIG_FILE = "config.json"
LAST_FILE = "last_checkpoint"
CURVE_FILE = "loss_curve.png"

MODEL_INIT_STREAM = 3
"""Stream number of the model's initial weights: ``rng([seed, 3, 0])``."""


class NonFiniteLossError(RuntimeError):
    """A loss term or a gradient became NaN or inf. The message names the term and the
    iteration and says which checkpoint is the last good one."""


# --------------------------------------------------------------------------------------------
# Checkpoint files (format: minimaskrcnn.training.checkpoint)
# --------------------------------------------------------------------------------------------


def checkpoint_name(iteration: int) -> str:
    return f"checkpoint_{iteration:06d}.npz"


def find_last_checkpoint(out_dir: str) -> str | None:
    """Path of the newest checkpoint of a run folder (``last_checkpoint``), or None."""
    path = os.path.join(out_dir, LAST_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        name = f.read().strip()
    ckpt = os.path.join(out_dir, name)
    if not os.path.isfile(ckpt):
        raise FileNotFoundError(f"{path} names {name}, which does not exist")
    return ckpt


def checkpoint_config(cfg: Config, dataset) -> dict:
    """The ``config`` a checkpoint stores: the Config's dict plus ``"dataset": {"category_ids",
    "class_names"}`` (label k is COCO category ``category_ids[k - 1]``), which
    ``config_from_dict`` ignores and ``predict`` / ``evaluate`` use to name the classes."""
    d = config_to_dict(cfg)
    d["dataset"] = {"category_ids": [int(c) for c in dataset.category_ids],
                    "class_names": list(dataset.class_names)}
    return d


def _save(out_dir: str, model, optimizer, iteration: int, cfg: Config, config_dict: dict) -> str:
    from minimaskrcnn.training.checkpoint import save_checkpoint

    path = os.path.join(out_dir, checkpoint_name(iteration))
    rng_state = {"seed": int(cfg.train.seed), "next_iteration": int(iteration),
                 "streams": "np.random.default_rng([seed, stream, counter]); stream 0 data "
                            "order (counter epoch), 1 crops (counter sample), 2 model "
                            "sampling (counter iteration)"}
    save_checkpoint(path, model, optimizer=optimizer, iteration=iteration,
                    config=config_dict, rng_state=rng_state)
    tmp = os.path.join(out_dir, LAST_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(os.path.basename(path) + "\n")
    os.replace(tmp, os.path.join(out_dir, LAST_FILE))
    return path


def _load(path: str, model, optimizer) -> int:
    from minimaskrcnn.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, model, optimizer=optimizer)
    return int(ckpt["iteration"])


# --------------------------------------------------------------------------------------------
# Logs
# --------------------------------------------------------------------------------------------


def _read_jsonl(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _truncate_log(path: str, iteration: int) -> list[dict]:
    """Keep the records of iterations before ``iteration`` (a resumed run rewrites the rest)."""
    records = [r for r in _read_jsonl(path) if r.get("iteration", -1) < iteration]
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return records


def _finite_or_raise(losses: dict, iteration: int, last_ckpt: str | None) -> float:
    keep = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint was written yet"
    missing = [k for k in LOSS_KEYS if k not in losses]
    if missing:
        raise ValueError(f"model.forward_train returned no {missing}")
    for k in LOSS_KEYS:
        v = float(losses[k])
        if not math.isfinite(v):
            raise NonFiniteLossError(
                f"iteration {iteration}: loss term {k} is {v}; training stopped before the "
                f"update, {keep}")
    return float(sum(float(losses[k]) for k in LOSS_KEYS))


def _check_grads(model, iteration: int, last_ckpt: str | None) -> None:
    for name, p in model.named_parameters():
        if not np.isfinite(p.grad).all():
            keep = f"the last good checkpoint is {last_ckpt}" if last_ckpt else "no checkpoint yet"
            raise NonFiniteLossError(
                f"iteration {iteration}: the gradient of {name} is not finite; training "
                f"stopped before the update, {keep}")


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def train(cfg: Config, train_dataset, out_dir: str, *, val_dataset=None,
          iterations: int | None = None, resume: bool = False,
          model_factory: Callable | None = None, val_limit: int | None = None,
          progress: bool = True, on_validation: Callable | None = None) -> dict:
    """Train a Mask R-CNN on a COCO dataset.

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
        model_factory: ``(cfg, rng) -> model`` (default :func:`minimaskrcnn.build_model`).
        val_limit: validate on the first ``val_limit`` images only.
        progress: show the tqdm bar (loss, lr, images/s, ETA).
        on_validation: called with ``(iteration, metrics)`` after each validation.

    Returns:
        ``{"model", "iteration", "checkpoint", "log", "val" (list of metrics), "seconds_per_iteration"
        (median over this call's iterations)}``.

    Raises:
        NonFiniteLossError: a loss term or gradient became NaN/inf (the message names it).
        FileNotFoundError: ``resume`` without a checkpoint in ``out_dir``.
        ValueError: nothing to train on, or a bad iteration count.
    """
    from tqdm import tqdm

    from minimaskrcnn.training.optim import SGD, WarmupMultiStepLR

    tc = cfg.train
    total = int(tc.iterations if iterations is None else iterations)
    if total < 1:
        raise ValueError(f"iterations must be >= 1, got {total}")
    if model_factory is None:
        from minimaskrcnn import build_model as model_factory
    os.makedirs(out_dir, exist_ok=True)
    batches = TrainBatches.from_config(train_dataset, tc)
    model = model_factory(cfg, sample_rng(tc.seed, MODEL_INIT_STREAM, 0))
    optimizer = SGD(model.named_parameters(), lr=tc.base_lr, momentum=tc.momentum,
                    weight_decay=tc.weight_decay)
    scheduler = WarmupMultiStepLR(optimizer, milestones=tc.milestones, gamma=tc.gamma,
                                  warmup_factor=tc.warmup_factor, warmup_iters=tc.warmup_iters)

    log_path = os.path.join(out_dir, LOG_FILE)
    start, last_ckpt = 0, None
    if resume:
        last_ckpt = find_last_checkpoint(out_dir)
        if last_ckpt is None:
            raise FileNotFoundError(f"{out_dir}: no checkpoint to resume from ({LAST_FILE} missing)")
        start = _load(last_ckpt, model, optimizer)
        scheduler.last_iter = start  # also sets optimizer.lr to the lr of iteration `start`
        _truncate_log(log_path, start)
        vals = _truncate_log(os.path.join(out_dir, VAL_FILE), start + 1)  # validations <= start
    else:
        for name in (LOG_FILE, VAL_FILE):
            if os.path.exists(os.path.join(out_dir, name)):
                os.remove(os.path.join(out_dir, name))
        vals = []
    ckpt_config = checkpoint_config(cfg, train_dataset)
    with open(os.path.join(out_dir, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(ckpt_config, f, indent=2)

    def validate(iteration):
        from minimaskrcnn.evaluation import evaluate_model

        metrics = evaluate_model(model, val_dataset, cfg.eval, limit=val_limit)
        metrics.pop("_results", None)
        record = {"iteration": iteration, **metrics}
        vals.append(record)
        with open(os.path.join(out_dir, VAL_FILE), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if on_validation is not None:
            on_validation(iteration, metrics)
        return metrics

    seconds = []
    bar = tqdm(range(start, total), initial=start, total=total, desc="train", unit="it",
               disable=not progress, dynamic_ncols=True)
    with open(log_path, "a", encoding="utf-8") as log:
        for t in bar:
            t0, c0 = time.perf_counter(), time.process_time()
            lr = scheduler.get_lr()
            batch = batches.batch(t)
            images = [b[0] for b in batch]
            targets = [b[1] for b in batch]
            losses, cache = model.forward_train(images, targets, sample_rng(tc.seed, 2, t))
            try:
                loss = _finite_or_raise(losses, t, last_ckpt)
                model.zero_grad()
                model.backward(cache)
                del cache
                _check_grads(model, t, last_ckpt)
            except NonFiniteLossError as e:  # leave the bad values in the log, then stop
                log.write(json.dumps({"iteration": t, "lr": lr, **{k: float(v) for k, v in losses.items()},
                                      "error": str(e)}) + "\n")
                raise
            optimizer.step()
            scheduler.step()
            dt = time.perf_counter() - t0
            seconds.append(dt)
            record = {"iteration": t, "lr": lr, **{k: float(losses[k]) for k in LOSS_KEYS},
                      "loss": loss, "seconds": dt, "cpu_seconds": time.process_time() - c0,
                      "images_per_s": len(images) / dt}
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", img_s=f"{len(images) / dt:.2f}",
                            refresh=False)
            done = t + 1
            if done % tc.checkpoint_every == 0 or done == total:
                last_ckpt = _save(out_dir, model, optimizer, done, cfg, ckpt_config)
            if val_dataset is not None and (done % tc.val_every == 0 or done == total):
                m = validate(done)
                bar.write(f"iteration {done}: val mask AP {m['segm']['AP']:.3f}, "
                          f"box AP {m['bbox']['AP']:.3f}, DSB {m['dsb_score']:.3f}")
    bar.close()

    from minimaskrcnn.viz_detections import plot_loss_curve

    plot_loss_curve(_read_jsonl(log_path), os.path.join(out_dir, CURVE_FILE), val_records=vals)
    return {"model": model, "iteration": max(start, total), "checkpoint": last_ckpt, "log": log_path,
            "val": vals, "seconds_per_iteration": float(np.median(seconds)) if seconds else None}
