"""Time of one fused gradient allreduce of ``nuclei-mini`` under MPI, and the projected
iteration time on W = 8, 32, 128 ranks across machines (ring allreduce cost model).

Measured (rank 0 prints markdown): the gradients of ``nuclei-mini`` (2,479,803 float32 in 81
tensors, built with ``build_model``; a same-sized synthetic layout if the model cannot be built),
median over ``--repeats`` of, each after a barrier so the ranks start together and taking the
slowest rank (a collective is as slow as its slowest member):

* ``allreduce_gradients``: copy the 81 gradients into the flat buffer, one ``MPI_Allreduce``
  (SUM, in place), copy back: what a training iteration pays;
* the same after ``bind_gradient_buffer`` (the gradients are views of the flat buffer: no
  copies);
* the bare ``MPI_Allreduce`` of the 9.9 MB flat buffer (the copies are the difference);
* one ``MPI_Allreduce`` per tensor (81 calls), the unfused alternative, for comparison.

Projected (paper): iteration time = compute + ring allreduce (no overlap of the two, as in our
loop), for W ranks each running ``--images-per-rank`` images per iteration in ``--compute-s``
seconds (the one-process nuclei-mini time for its batch of 4: 0.8 s, docs/performance.md), at 10
and 100 Gb/s per rank with ``--latency-us`` per ring step. The global batch grows with W (weak
scaling: a rank's work stays fixed), so the learning rate follows the linear scaling rule
(Goyal et al. 2017: lr = base_lr x global batch / base batch, with the warm-up) and the
iteration count shrinks by the same factor for the same number of epochs. The last column is
the unfused alternative on paper: the same bytes, but each of the 81 tensors pays the 2(W-1)
latency steps. The model assumes one rank per machine (or a per-rank share of the link);
ranks that share a NIC divide its bandwidth.

    python benchmarks/bench_allreduce.py [--ranks 2] [--repeats 20] [--compute-s 0.8]
    mpiexec -n 2 python benchmarks/bench_allreduce.py [...]

Started without ``mpiexec``, the script starts itself under ``mpiexec -n --ranks`` (the
``mpich`` wheel's, from ``pip install 'minimaskrcnn[mpi]'``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from minimaskrcnn import distributed as dist

NUCLEI_MINI_PARAMS = 2_479_803


def ring_allreduce_seconds(nbytes: float, ranks: int, bandwidth_bits_per_s: float,
                           latency_s: float = 25e-6) -> float:
    """Time of one ring allreduce of ``nbytes`` over ``ranks`` ranks (Patarasuk & Yuan 2009):
    ``2 (W-1)/W * nbytes * 8 / bandwidth + 2 (W-1) * latency`` (a reduce-scatter then an
    allgather, each W-1 steps of nbytes/W per link). 0 for one rank.

    Args:
        nbytes: bytes reduced (float32 gradients: 4 per parameter).
        ranks: W >= 1.
        bandwidth_bits_per_s: per-link bandwidth, e.g. ``10e9`` for 10 Gb/s Ethernet.
        latency_s: per-step latency (default 25 us, TCP over a data-centre Ethernet).

    Returns:
        seconds.

    Raises:
        ValueError: ``ranks < 1``, ``nbytes < 0``, bandwidth <= 0 or latency < 0.
    """
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    if nbytes < 0 or not bandwidth_bits_per_s > 0 or latency_s < 0:
        raise ValueError(f"need nbytes >= 0, bandwidth > 0, latency >= 0; got {nbytes}, "
                         f"{bandwidth_bits_per_s}, {latency_s}")
    w = ranks
    return 2 * (w - 1) / w * nbytes * 8 / bandwidth_bits_per_s + 2 * (w - 1) * latency_s


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=2, help="W when the script starts mpiexec")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compute-s", type=float, default=0.8,
                    help="seconds of forward+backward per iteration on one rank")
    ap.add_argument("--images-per-rank", type=int, default=4,
                    help="images one rank runs in --compute-s")
    ap.add_argument("--base-lr", type=float, default=0.01, help="learning rate of nuclei-mini (0.01) ...")
    ap.add_argument("--base-batch", type=int, default=4, help="... at this global batch (4)")
    ap.add_argument("--latency-us", type=float, default=25.0, help="per ring step")
    return ap.parse_args(argv)


def gradient_layout():
    """``[(name, Param)]`` of nuclei-mini (float32), or a synthetic layout of the same size."""
    from minimaskrcnn.nn.module import Param  # noqa: PLC0415

    try:
        from minimaskrcnn.model import build_model  # noqa: PLC0415

        model = build_model("nuclei-mini", np.random.default_rng(0))
        named = list(model.named_parameters())
        source = "nuclei-mini's parameters"
    except Exception as e:  # noqa: BLE001  (benchmark: fall back, say so)
        sizes = [NUCLEI_MINI_PARAMS // 81] * 80
        sizes.append(NUCLEI_MINI_PARAMS - sum(sizes))
        named = [(f"p{i}", Param(np.zeros(n, np.float32))) for i, n in enumerate(sizes)]
        source = f"synthetic layout (build_model failed: {type(e).__name__})"
    rng = np.random.default_rng(1)
    for _, p in named:
        p.grad[...] = rng.standard_normal(p.grad.shape, dtype=np.float32)
    return named, source


def timed(comm, fn, repeats, warmup):
    """Median seconds of ``fn()`` on this rank, each call after a barrier; the slowest rank's
    median is returned on every rank."""
    for _ in range(warmup):
        comm.barrier()
        fn()
    times = []
    for _ in range(repeats):
        comm.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return max(comm.allgather(statistics.median(times)))


def measure(comm, args):
    named, source = gradient_layout()
    n = sum(p.grad.size for _, p in named)
    grads = [p.grad for _, p in named]
    flat = np.ones(n, np.float32)
    fused = timed(comm, lambda: dist.allreduce_gradients(named, comm), args.repeats, args.warmup)
    bare = timed(comm, lambda: comm.Allreduce(dist.IN_PLACE, flat, op=dist.SUM), args.repeats,
                 args.warmup)

    def per_tensor():
        for g in grads:
            comm.Allreduce(dist.IN_PLACE, g.reshape(-1), op=dist.SUM)

    unfused = timed(comm, per_tensor, args.repeats, args.warmup)
    dist.bind_gradient_buffer(named, comm)
    bound = timed(comm, lambda: dist.allreduce_gradients(named, comm), args.repeats, args.warmup)
    return {"source": source, "tensors": len(named), "elements": n, "nbytes": 4 * n,
            "fused": fused, "bound": bound, "bare": bare, "unfused": unfused}


def report(m, w, args):
    from mpi4py import MPI  # noqa: PLC0415

    lib = MPI.Get_library_version().splitlines()[0].strip()
    bus = lambda t: 2 * (w - 1) / w * m["nbytes"] / t / 1e9  # noqa: E731  (GB/s, NCCL's busbw)
    print(f"## One gradient allreduce, W = {w} ranks on {os.cpu_count()} CPUs ({lib})\n")
    print(f"{m['elements']:,} float32 gradients in {m['tensors']} tensors ({m['source']}), "
          f"{m['nbytes'] / 1e6:.2f} MB; median of {args.repeats} after {args.warmup} warm-up, "
          "slowest rank\n")
    print("| allreduce | ms | bus bandwidth GB/s | share of a "
          f"{args.compute_s:g} s iteration |")
    print("|---|---:|---:|---:|")
    rows = [("`allreduce_gradients` (copy in, 1 MPI_Allreduce, copy out)", m["fused"]),
            ("`allreduce_gradients` after `bind_gradient_buffer` (no copies)", m["bound"]),
            ("bare MPI_Allreduce of the flat buffer", m["bare"]),
            (f"one MPI_Allreduce per tensor ({m['tensors']} calls)", m["unfused"])]
    for label, t in rows:
        share = t / (args.compute_s + t)
        print(f"| {label} | {1e3 * t:.2f} | {bus(t):.2f} | {100 * share:.1f}% |")

    lat = args.latency_us * 1e-6
    print(f"\n## Projected iteration time across machines (ring allreduce: "
          f"2(W-1)/W x {m['nbytes'] / 1e6:.2f} MB / bandwidth + 2(W-1) x "
          f"{args.latency_us:g} us)\n")
    print(f"Each rank: {args.images_per_rank} images in {args.compute_s:g} s of compute; "
          f"global batch = {args.images_per_rank} W; learning rate = {args.base_lr:g} x "
          f"global batch / {args.base_batch} (linear scaling rule, keep the warm-up); "
          "no overlap of compute and allreduce. Linear scaling is the starting point, not a "
          "guarantee: past a global batch of a few hundred (MegDet trained detectors at 256), "
          "lengthen the warm-up and watch the first iterations' loss.\n")
    print("| W | link | global batch | lr | allreduce ms | iteration s | allreduce share | "
          f"images/s | speed-up vs W=1 | unfused allreduce ms ({m['tensors']} calls) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    base_ips = args.images_per_rank / args.compute_s
    lr1 = args.base_lr * args.images_per_rank / args.base_batch
    print(f"| 1 | - | {args.images_per_rank} | {lr1:g} | 0 | {args.compute_s:.3f} | 0% | "
          f"{base_ips:.1f} | 1.0x | 0 |")
    for ranks in (8, 32, 128):
        for gbps in (10, 100):
            t_ar = ring_allreduce_seconds(m["nbytes"], ranks, gbps * 1e9, lat)
            # unfused: the same bytes, but every tensor pays the 2(W-1) latency steps
            t_unf = t_ar + (m["tensors"] - 1) * 2 * (ranks - 1) * lat
            it = args.compute_s + t_ar
            gb = args.images_per_rank * ranks
            ips = gb / it
            print(f"| {ranks} | {gbps} Gb/s | {gb} | {args.base_lr * gb / args.base_batch:g} | "
                  f"{1e3 * t_ar:.1f} | {it:.3f} | {100 * t_ar / it:.1f}% | {ips:.0f} | "
                  f"{ips / base_ips:.1f}x | {1e3 * t_unf:.0f} |")


def main(argv=None):
    args = parse_args(argv)
    if not dist.launched_by_mpi():
        mpiexec = dist.find_mpiexec()
        if mpiexec is None:
            sys.exit("bench_allreduce: no mpiexec; pip install 'minimaskrcnn[mpi]'")
        cmd = [mpiexec, "-n", str(args.ranks), sys.executable, os.path.abspath(__file__),
               *(sys.argv[1:] if argv is None else argv)]
        sys.exit(subprocess.call(cmd))
    with dist.abort_on_error() as comm:
        m = measure(comm, args)
        if comm.is_main:
            report(m, comm.size, args)


if __name__ == "__main__":
    main()
