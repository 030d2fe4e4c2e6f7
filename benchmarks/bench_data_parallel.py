"""Seconds per training iteration of nuclei-mini on W = 1 and W = 2 MPI ranks, same fixed batch.

One iteration is what ``training/loop.py`` does: each rank's share of the batch of 4 random
256x256 crops of the embedded DSB2018 sample (``bench_model.training_batch``: the same crops
as ``bench_model.py``), ``forward_train`` with the loss normalisers summed over the ranks, the
losses summed, ``backward``, one fused ``allreduce_gradients``, the SGD step. Each rank times
every iteration after a barrier; an iteration lasts as long as its slowest rank. Median of
``--iters`` iterations after 2 warm-up iterations (Numba compiles). The allreduce is also timed
alone (its share of the iteration), after a barrier that measures how long the faster rank
waits for the slower one (the ranks' images differ in instances: load imbalance).

    python benchmarks/bench_data_parallel.py [--iters 10] [--ranks 1 2] [--batches 1]

Each W runs in its own ``mpiexec -n W`` (W = 1: a plain process, no MPI) with one BLAS thread
and ``cores / W`` Numba threads per rank, one after the other. torchvision's time on the same
batch comes from ``bench_model.py --torch`` (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def worker(iters: int, batches: int) -> None:
    """Run under mpiexec (or alone): time the iterations, rank 0 prints one JSON line."""
    import numpy as np

    sys.path.insert(0, HERE)
    from bench_model import training_batch

    from minimaskrcnn.config import get_preset
    from minimaskrcnn.data.loader import Stream, sample_rng
    from minimaskrcnn.distributed import (
        allreduce_gradients,
        allreduce_sum,
        bind_gradient_buffer,
        get_comm,
        split_batch,
    )
    from minimaskrcnn.model import build_model
    from minimaskrcnn.training.optim import SGD

    comm = get_comm()
    cfg = get_preset("nuclei-mini")
    model = build_model(cfg, np.random.default_rng(0))
    ks = split_batch(cfg.train.batch_size, comm)
    fixed = []  # the same fixed batches for every W (seeds 1, 2, ...), this rank's share
    for b in range(batches):
        images, targets = training_batch(cfg, np.random.default_rng(1 + b))
        fixed.append(([images[k] for k in ks], [targets[k] for k in ks]))
    opt = SGD(model.named_parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    distributed = comm.size > 1
    if distributed:
        bind_gradient_buffer(model, comm)
    counts = (lambda c: allreduce_sum(c, comm)) if distributed else None
    totals, reduces, waits = [], [], []
    for it in range(iters + 2):
        images, targets = fixed[it % batches]
        rngs = [sample_rng(0, Stream.SAMPLING, 4 * it + k) for k in ks]
        comm.barrier()
        t0 = time.perf_counter()
        kw = {"sum_counts": counts} if distributed else {}
        _, losses, cache = model.forward_train(images, targets, rngs, **kw)
        if distributed:
            allreduce_sum(losses, comm)
        model.zero_grad()
        model.backward(None, cache)
        t1 = time.perf_counter()
        if distributed:
            comm.barrier()  # wait for the slower rank (load imbalance), timed apart
        tb = time.perf_counter()
        if distributed:
            allreduce_gradients(model, comm)
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if it >= 2:
            totals.append(t3 - t0)
            reduces.append(t2 - tb)
            waits.append(tb - t1)
    # the slowest rank's time of each iteration
    totals = np.max(np.array(comm.allgather(totals)), axis=0)
    reduces = np.max(np.array(comm.allgather(reduces)), axis=0)
    waits = np.max(np.array(comm.allgather(waits)), axis=0)  # the faster rank's wait
    if comm.is_main:
        print(json.dumps({"ranks": comm.size, "s_per_iter": statistics.median(totals),
                          "allreduce_s": statistics.median(reduces),
                          "wait_s": statistics.median(waits), "iters": iters,
                          "images_per_rank": len(ks)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, default=1,
                    help="cycle through this many fixed batches (seeds 1, 2, ...; default 1: the "
                         "batch of bench_model.py, so torchvision's time there compares)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.iters, args.batches)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    mpiexec = mpiexec if os.access(mpiexec, os.X_OK) else shutil.which("mpiexec")
    rows = []
    for w in args.ranks:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS=str(max(1, cores // w)))
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--iters", str(args.iters),
               "--batches", str(args.batches)]
        if w > 1:
            cmd = [mpiexec, "-n", str(w), *cmd]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    load = os.getloadavg()[0]
    print(f"nuclei-mini, batch 4 x 256x256 crops ({args.batches} fixed batch(es), the same for "
          f"every W), {cores} cores, "
          f"median of {args.iters} iterations, load average {load:.1f}\n")
    print("| ranks W | images per rank | s/iteration | x of W=1 | allreduce ms | allreduce share "
          "| waiting for the slower rank, ms |")
    print("|---|---|---|---|---|---|---|")
    base = rows[0]["s_per_iter"]
    for r in rows:
        print(f"| {r['ranks']} | {r['images_per_rank']} | {r['s_per_iter']:.3f} | "
              f"{r['s_per_iter'] / base:.2f} | {1e3 * r['allreduce_s']:.1f} | "
              f"{100 * r['allreduce_s'] / r['s_per_iter']:.1f}% | {1e3 * r['wait_s']:.0f} |")


if __name__ == "__main__":
    main()
