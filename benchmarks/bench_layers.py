"""Forward + backward time of the nn layers against PyTorch CPU on the same shapes.

    python benchmarks/bench_layers.py [--repeat 7] [--threads 2] [--cpu-time]
                                      [--torch $TORCH_VENV/bin/python]

Float32, NumPy arrays on the CPU, the BLAS (OpenBLAS) limited to ``--threads`` threads. The
PyTorch side runs in a separate interpreter (benchmarks/torch_layers.py with
torch.set_num_threads(threads)) so that torch is never imported with the package. Prints a
Markdown table: best-of-``repeat`` milliseconds (forward, backward, forward+backward), torch's
forward+backward and the ratio ours / torch.

``--cpu-time`` measures process CPU time instead of wall time: with ``--threads 1`` that is the
work done, nearly independent of other processes sharing the cores (use it on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _threads_from_argv(argv) -> str:
    """The BLAS reads its thread count at import, so set it before importing NumPy."""
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return "2"


for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = _threads_from_argv(sys.argv)

import numpy as np  # noqa: E402

from minimaskrcnn.nn import Conv2d, ConvTranspose2d, GroupNorm  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import torch_env  # noqa: E402

TORCH_PYTHON = os.path.join(os.environ.get("TORCH_VENV", "torch-venv"), "bin", "python")

CASES = {
    "conv3x3 (4,32,128,128)->32": (lambda: Conv2d(32, 32, 3, padding=1, bias=False, rng=0),
                                   (4, 32, 128, 128)),
    "conv3x3 (4,64,32,32)->64": (lambda: Conv2d(64, 64, 3, padding=1, bias=False, rng=0),
                                 (4, 64, 32, 32)),
    "conv1x1 s2 (4,64,64,64)->128": (lambda: Conv2d(64, 128, 1, stride=2, bias=False, rng=0),
                                     (4, 64, 64, 64)),
    "groupnorm(8,32) (4,32,128,128)": (lambda: GroupNorm(8, 32), (4, 32, 128, 128)),
    "convT k2s2 (64,64,14,14)->64": (lambda: ConvTranspose2d(64, 64, 2, stride=2, rng=0),
                                     (64, 64, 14, 14)),
}


def time_case(make, shape, repeat, clock=time.perf_counter):
    """Best-of-``repeat`` seconds of forward, backward and forward+backward (after 2 warm-ups)."""
    layer = make()
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    best = [np.inf, np.inf, np.inf]
    dy = None
    for i in range(repeat + 2):
        t0 = clock()
        y, cache = layer.forward(x)
        t1 = clock()
        if dy is None:  # first (warm-up) iteration only
            dy = np.random.default_rng(1).standard_normal(y.shape, dtype=np.float32)
        layer.backward(dy, cache)
        t2 = clock()
        del cache
        layer.zero_grad()
        if i >= 2:
            best = [min(best[0], t1 - t0), min(best[1], t2 - t1), min(best[2], t2 - t0)]
    return best


def torch_times(python: str, repeat: int, threads: int, cpu_time: bool) -> dict:
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_layers.py")
    if not os.path.exists(python):
        return {}
    cmd = [python, script, "--repeat", str(repeat), "--threads", str(threads)]
    out = subprocess.run(cmd + (["--cpu-time"] if cpu_time else []), capture_output=True,
                         text=True, check=True, env=torch_env())
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2, help="BLAS / torch threads")
    ap.add_argument("--cpu-time", action="store_true", help="process CPU time, not wall time")
    ap.add_argument("--torch", default=TORCH_PYTHON, help="python of the torch venv ('' to skip)")
    args = ap.parse_args(argv)
    clock = time.process_time if args.cpu_time else time.perf_counter
    ours = {name: time_case(make, shape, args.repeat, clock)
            for name, (make, shape) in CASES.items()}
    theirs = (torch_times(args.torch, args.repeat, args.threads, args.cpu_time)
              if args.torch else {})
    print(f"{args.threads} thread(s), {'CPU' if args.cpu_time else 'wall'} time, best of "
          f"{args.repeat}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
          f"numpy {np.__version__}")
    print("| layer (fwd+bwd, float32) | ours fwd ms | ours bwd ms | ours fwd+bwd ms | torch ms "
          "| ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (f, b, tot) in ours.items():
        t = theirs.get(name)
        ts = f"{t * 1e3:.1f}" if t else "-"
        ratio = f"{tot / t:.2f}x" if t else "-"
        print(f"| {name} | {f * 1e3:.1f} | {b * 1e3:.1f} | {tot * 1e3:.1f} | {ts} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
