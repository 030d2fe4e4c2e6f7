"""Seconds per training iteration of nuclei-mini on W = 1 and W = 2 MPI ranks, same fixed batch.

One iteration is what ``training/loop.py`` does: each rank's share of the batch of 4 random
256x256 crops of the embedded DSB2018 sample (``bench_model.training_batch``: the same crops
as ``bench_model.py``), ``forward_train`` with the loss normalisers summed over the ranks, the
losses summed, ``backward``, one fused ``allreduce_gradients``, the SGD step. Each rank times
every iteration after a barrier; an iteration lasts as long as its slowest rank. Median of
``--iters`` iterations after 2 warm-up iterations (Numba compiles). The allreduce is also timed
alone (its share of the iteration), after a barrier that measures how long the faster rank
waits for the slower one (the ranks' images differ in instances: load imbalance).

    python benchmarks/bench_data_parallel.py [--iters 10] [--ranks 1 2] [--batches 1] \
        [--split contiguous balanced balanced+rois]

W > 1 gives one row per ``--split``: the batch in contiguous blocks of B / W images (the rule
before ``balance_batch``); dealt by the crops' instances (``balance_batch``); and that with
the mask head's foreground RoIs evened out over the ranks after pooling (``RoIExchange``): what
the training loop does. In one ``mpiexec`` job, each batch runs with every rule in turn, so the
rules share the machine's conditions (its speed drifts by 10-20 % over minutes). The script
also prints the machine's sgemm rate on one and on all cores (measured in the same run) and the
FLOPs of the iteration's matrix products (``flops.py``): their quotient is the floor of an
iteration on these cores, and the ``x floor`` column is how far each row is from it.

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
sys.path.insert(0, HERE)
from timing import sgemm_gflops  # noqa: E402


def worker(iters: int, batches: int, splits: list[str]) -> None:
    """Run under mpiexec (or alone): time the iterations, rank 0 prints one JSON line per split.

    With several splits, every batch runs once with each split in turn (interleaved), so that
    the rules are compared under the same machine conditions."""
    import numpy as np

    sys.path.insert(0, HERE)
    from bench_model import training_batch
    from flops import count_flops

    from minimaskrcnn.config import get_preset
    from minimaskrcnn.data.loader import Stream, sample_rng
    from minimaskrcnn.distributed import (
        RoIExchange,
        allreduce_gradients,
        allreduce_sum,
        balance_batch,
        bind_gradient_buffer,
        broadcast_parameters,
        get_comm,
        split_batch,
    )
    from minimaskrcnn.model import build_model
    from minimaskrcnn.training.optim import SGD

    comm = get_comm()
    cfg = get_preset("nuclei-mini")
    model = build_model(cfg, np.random.default_rng(0))
    if comm.size == 1:
        splits = ["-"]
    fixed = []  # the same fixed batches for every W (seeds 1, 2, ...)
    flops = 0.0
    for b in range(batches):
        images, targets = training_batch(cfg, np.random.default_rng(1 + b))
        balanced = balance_batch([t["boxes"].shape[0] for t in targets], comm)
        whole = list(range(len(images)))
        shares = {"-": whole,  # one process: the whole batch
                  "alone": whole if comm.is_main else [],  # rank 0 alone, the others wait
                  "contiguous": split_batch(cfg.train.batch_size, comm),  # blocks of B / W
                  "balanced": balanced,  # dealt by the crops' instances
                  "balanced+rois": balanced}  # and the mask head's RoIs evened out: the loop
        fixed.append((images, targets, {s: shares[s] for s in splits}))
        if comm.is_main:  # the products' FLOPs of the batch's forward + backward
            with count_flops() as count:
                _, _, cache = model.forward_train(images, targets, np.random.default_rng(0))
                model.backward(None, cache)
            flops += count.total / batches
            model.zero_grad()
    opt = SGD(model.named_parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    distributed = comm.size > 1
    if distributed:
        bind_gradient_buffer(model, comm)
    counts = (lambda c: allreduce_sum(c, comm)) if distributed else None
    times = {s: ([], [], []) for s in splits}  # totals, allreduces, waits
    for it in range(iters + 2):
        all_images, all_targets, shares = fixed[it % batches]
        for split in splits:
            ks = shares[split]
            images, targets = [all_images[k] for k in ks], [all_targets[k] for k in ks]
            rngs = [sample_rng(0, Stream.SAMPLING, 4 * it + k) for k in ks]
            together = distributed and split != "alone"
            comm.barrier()
            if split == "alone" and not comm.is_main:  # wait asleep, not polling: one core
                request = comm.mpi_comm.Ibarrier()  # is rank 0's alone
                while not request.Test():
                    time.sleep(1e-3)
                broadcast_parameters(model, comm)  # rank 0's parameters everywhere
                continue
            t0 = time.perf_counter()
            if ks:
                kw = {"sum_counts": counts} if together else {}
                if split == "balanced+rois":
                    kw["roi_exchange"] = RoIExchange(comm, len(ks))
                _, losses, cache = model.forward_train(images, targets, rngs, **kw)
                if together:
                    allreduce_sum(losses, comm)
                model.zero_grad()
                model.backward(None, cache)
                del cache
            t1 = time.perf_counter()
            if together:
                comm.barrier()  # wait for the slower rank (load imbalance), timed apart
            tb = time.perf_counter()
            if together:
                allreduce_gradients(model, comm)
            t2 = time.perf_counter()
            if ks:
                opt.step()
            t3 = time.perf_counter()
            if split == "alone" and distributed:  # untimed: rank 0's parameters everywhere
                comm.mpi_comm.Ibarrier().Wait()  # releases the others' wait
                broadcast_parameters(model, comm)
            if it >= 2:
                for series, value in zip(times[split], (t3 - t0, t2 - tb, tb - t1), strict=True):
                    series.append(value)
    if "alone" in splits and not comm.is_main:  # rank 0's times alone
        times["alone"] = ([0.0] * iters,) * 3
    for split in splits:
        # the slowest rank's time of each iteration; the faster rank's wait
        totals, reduces, waits = (np.max(np.array(comm.allgather(v)), axis=0)
                                  for v in times[split])
        images = comm.allgather([len(f[2][split]) for f in fixed])  # [rank][batch]
        if comm.is_main:
            together = split not in ("alone", "-")
            per_batch = ["+".join(str(images[r][b]) for r in range(comm.size if together else 1))
                         for b in range(batches)]
            print(json.dumps({"ranks": comm.size if together else 1, "split": split,
                              "s_per_iter": statistics.median(totals),
                              "s_mean": statistics.fmean(totals),
                              "allreduce_s": statistics.median(reduces) if together else 0.0,
                              "wait_s": statistics.median(waits) if together else 0.0,
                              "iters": iters, "images_per_rank": " ".join(per_batch),
                              "flops": flops}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--ranks", type=int, nargs="+", default=[2],
                    help="one job per W (W = 1: a plain process)")
    ap.add_argument("--batches", type=int, default=1,
                    help="cycle through this many fixed batches (seeds 1, 2, ...; default 1: the "
                         "batch of bench_model.py, so torchvision's time there compares)")
    ap.add_argument("--split", nargs="+",
                    choices=("alone", "contiguous", "balanced", "balanced+rois"),
                    default=["alone", "contiguous", "balanced", "balanced+rois"],
                    help="how W > 1 ranks share a batch: rank 0 alone runs it (the one-process "
                         "iteration, the others wait); contiguous blocks of B / W images (the "
                         "old rule); balance_batch on the crops' instances; that and the mask "
                         "head's RoIs evened out by RoIExchange (what the loop does). One row "
                         "each, interleaved batch by batch in one job")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.iters, args.batches, args.split)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    mpiexec = mpiexec if os.access(mpiexec, os.X_OK) else shutil.which("mpiexec")
    rows, rates = [], [(sgemm_gflops(1), sgemm_gflops(cores))]
    for w in args.ranks:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", NUMBA_NUM_THREADS=str(max(1, cores // w)))
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--iters", str(args.iters),
               "--batches", str(args.batches), "--split", *args.split]
        if w > 1:
            cmd = [mpiexec, "-n", str(w), *cmd]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        rows += [json.loads(line) for line in out.strip().splitlines() if line.startswith("{")]
    load = os.getloadavg()[0]
    rates.append((sgemm_gflops(1), sgemm_gflops(cores)))
    flops = rows[0]["flops"]
    rate_all = min(r[1] for r in rates)
    floor = flops / (rate_all * 1e9)
    print(f"nuclei-mini, batch 4 x 256x256 crops ({args.batches} fixed batch(es), the same for "
          f"every row), {cores} cores, median of {args.iters} iterations (the batches in turn), "
          f"load average {load:.1f}")
    print(f"sgemm (2048^3 float32, NumPy's BLAS) before / after the jobs: "
          f"{rates[0][0]:.0f} / {rates[1][0]:.0f} GFLOP/s on 1 thread, "
          f"{rates[0][1]:.0f} / {rates[1][1]:.0f} on {cores}; the products of one iteration "
          f"(forward + backward, mean over the batches): {flops / 1e9:.1f} GFLOP; floor on "
          f"{cores} cores at the lower rate {floor:.3f} s\n")
    print("| ranks W | split | images per rank (per batch) | s/iteration | mean | x of W=1 "
          "| x floor | allreduce ms | waiting for the slower rank, ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    ones = [r for r in rows if r["ranks"] == 1]
    base = (ones[-1] if ones else rows[0])["s_per_iter"]  # the interleaved one if there is one
    for r in rows:
        print(f"| {r['ranks']} | {r['split']} | {r['images_per_rank']} | {r['s_per_iter']:.3f} | "
              f"{r['s_mean']:.3f} | {r['s_per_iter'] / base:.2f} | {r['s_per_iter'] / floor:.2f} "
              f"| {1e3 * r['allreduce_s']:.1f} | {1e3 * r['wait_s']:.0f} |")


if __name__ == "__main__":
    main()
