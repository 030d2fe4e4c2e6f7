"""The resumable, seeded sweep: every arm of a table for several seeds, one run folder and one
``result.json`` each.

Layout::

    <sweep dir>/<table>/<arm>/seed<k>/      the run folder of training.loop.train (config.json,
                                            log.jsonl, checkpoints, loss_curve.png), and
    <sweep dir>/<table>/<arm>/seed<k>/result.json   written when the run is finished and evaluated

``result.json`` (:data:`RESULT_FILE`): ``{"table", "arm", "label", "seed", "schedule" (its
name), "overrides" (the arm's), "config" (config_to_dict),
"data" (the train / val sets: source, images), "iterations", "metrics" ({"segm": {"AP", "AP50",
"AP75"}, "bbox": {...}, "keypoints": {...}, "dsb_score", "num_images", "seconds_per_image", ...}:
those of the run's heads, as ``evaluate_model`` gives them: no "segm" and no "dsb_score" without
a mask head, "keypoints" only with a keypoint head),
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
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Sequence

from minimaskrcnn._atomic import write_atomic
from minimaskrcnn.ablations.tables import (
    Schedule,
    Table,
    arm_config,
    get_schedule,
    get_table,
    select_arms,
)
from minimaskrcnn.config import Config, config_from_dict, config_to_dict
from minimaskrcnn.distributed import get_comm
from minimaskrcnn.evaluation import evaluate_model
from minimaskrcnn.training.loop import train
from minimaskrcnn.training.run_folder import RunFolder, checkpoint_iteration

__all__ = ["RESULT_FILE", "metrics_text", "read_json", "read_result", "run_dir", "run_state",
           "run_sweep", "write_json"]

RESULT_FILE = "result.json"


def write_json(path: str, obj) -> None:
    """Write ``obj`` as indented JSON (NaN allowed: a metric without a value) atomically."""
    write_atomic(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


def run_dir(sweep_dir: str, table: str, arm: str, seed: int) -> str:
    """``<sweep_dir>/<table>/<arm>/seed<seed>``."""
    return os.path.join(sweep_dir, table, arm, f"seed{seed}")


def read_json(path: str) -> dict:
    """A ``result.json`` (or the summary) as a dict.

    Raises:
        ValueError: the file is not JSON (the message names it and says to delete it).
    """
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as e:
        raise ValueError(f"{path}: not a result file ({e}); delete it to run that run again") \
            from None


def read_result(path: str) -> dict:
    """A run's ``result.json``, checked: an object with ``table`` and ``arm`` strings and
    ``seed`` and ``iterations`` integers.

    Raises:
        ValueError: the file is not JSON or not such an object (one line naming it, saying to
            delete it to run that run again).
    """
    r = read_json(path)
    problem = None
    if not isinstance(r, dict):
        problem = f"holds {type(r).__name__} {r!r:.40}, not an object"
    else:
        for key, kind in (("table", str), ("arm", str), ("seed", int), ("iterations", int)):
            if key in r and (not isinstance(r[key], kind) or isinstance(r[key], bool)):
                problem = f"{key} is {r[key]!r:.40}, not {'a string' if kind is str else 'an integer'}"
                break
            if key not in r and key != "iterations":
                problem = f"has no {key!r}"
                break
    if problem is not None:
        raise ValueError(f"{path}: not a result file ({problem}); delete it to run that run "
                         "again")
    return r


def run_state(path: str) -> tuple[str, int]:
    """What a run folder needs: ``("done", iterations)`` (it has a ``result.json``),
    ``("resume", iteration)`` (a checkpoint at ``iteration``), or ``("fresh", 0)`` (nothing
    to continue: no folder, an empty one, or one killed before its first checkpoint).

    Raises:
        ValueError: an unreadable ``result.json``.
        FileNotFoundError: ``last_checkpoint`` names a missing checkpoint.
    """
    result = os.path.join(path, RESULT_FILE)
    if os.path.isfile(result):
        return "done", int(read_result(result).get("iterations", 0))
    if not os.path.isdir(path):
        return "fresh", 0
    last = RunFolder(path).last_checkpoint()
    if last is None:
        return "fresh", 0
    return "resume", checkpoint_iteration(last)


def _stored_config(stored: dict, path: str) -> dict:
    """The model / train / eval sections a ``result.json`` stores, with the fields added to
    the config since it was written filled in with their defaults (what the run trained)."""
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


def metrics_text(metrics: dict) -> str:
    """``"mask AP 0.334, box AP 0.344, DSB 0.338"``: the AP of each head the metrics have (mask,
    box, keypoint) and the DSB score, for the sweep's log lines."""
    parts = [f"{name} AP {metrics[key]['AP']:.3f}"
             for key, name in (("segm", "mask"), ("bbox", "box"), ("keypoints", "keypoint"))
             if isinstance(metrics.get(key), dict) and "AP" in metrics[key]]
    if "dsb_score" in metrics:
        parts.append(f"DSB {metrics['dsb_score']:.3f}")
    return ", ".join(parts)


def _data_info(dataset) -> dict:
    source = getattr(dataset, "source", None)
    return {"source": source if isinstance(source, str) else None, "images": len(dataset)}


def _log_times(path: str) -> tuple[float, float | None]:
    """(sum, median) of the ``seconds`` of a run folder's ``log.jsonl`` (0, None without)."""
    seconds = [float(rec["seconds"]) for rec in RunFolder(path).read_log()
               if "seconds" in rec and "error" not in rec]
    return float(sum(seconds)), (float(statistics.median(seconds)) if seconds else None)


def run_sweep(table: str | Table, sweep_dir: str, train_dataset, val_dataset, *,
              seeds: Sequence[int] = (0, 1, 2), schedule: Schedule | str | None = None,
              arms: Sequence[str] | None = None, preset: str | None = None,
              base: Config | None = None, val_limit: int | None = None, progress: bool = True,
              keep_checkpoints: bool = False, train_fn: Callable = train,
              evaluate_fn: Callable = evaluate_model, comm=None,
              log: Callable[[str], None] | None = print) -> list[dict]:
    """Train and evaluate every available arm of ``table`` for every seed, resumably.

    Runs go arm by arm, seed by seed (all arms of seed 0 first, so that an early look at the
    table has every row): for each, rank 0 decides :func:`run_state` and broadcasts it; a done
    run is skipped, a run with a checkpoint resumes, another trains afresh; then
    ``evaluate_fn`` on ``val_dataset`` and rank 0 writes ``result.json`` (module docstring).

    Args:
        table: a table name (``"2c"``, ``"5"``) or :class:`Table`.
        sweep_dir: the sweep's folder (created).
        train_dataset, val_dataset: ``CocoDataset`` s (the DSB2018 nuclei for 2c, 2d, 2e and
            3; :func:`shapes_datasets` for 2b; :func:`keypoint_shapes_datasets` for 5 and 6:
            :func:`generated_datasets`; the arms' ``num_classes`` is the train set's).
        seeds: the seeds of every arm (>= 0, distinct).
        schedule: a :class:`Schedule` or the name of one of :data:`SCHEDULES` (default the
            table's).
        arms: run only these arms (names); default every available arm.
        preset: the base preset (default the table's: ``nuclei-mini``, ``shapes-mini``,
            ``keypoints-mini``).
        base: a base Config instead of a preset (a test's tiny network).
        val_limit: evaluate on the first ``val_limit`` val images only.
        progress: tqdm bars in training and evaluation.
        keep_checkpoints: keep every checkpoint of a finished run (default: the last only).
        train_fn: :func:`minimaskrcnn.training.loop.train` (a test passes a fake with its
            signature).
        evaluate_fn: :func:`minimaskrcnn.evaluation.evaluate_model` (likewise).
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
    comm = get_comm() if comm is None else comm
    tab = get_table(table) if isinstance(table, str) else table
    sched = get_schedule(schedule if schedule is not None else tab.schedule)
    preset = preset or tab.preset
    seeds = [int(s) for s in seeds]
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct integers >= 0, got {seeds}")
    chosen = select_arms(tab, arms)
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
            stored = read_result(os.path.join(path, RESULT_FILE)) if state == "done" else None
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
            say(f"{head}: done, skipped ({metrics_text(stored.get('metrics') or {})})")
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
            write_json(os.path.join(path, RESULT_FILE), record)
            if not keep_checkpoints:
                RunFolder(path).prune_checkpoints()
        comm.barrier()
        say(f"{head}: {metrics_text(metrics)}; train {t1 - t0:.0f} s, eval {t2 - t1:.0f} s")
        results.append(record)
    return results
