"""Forward + backward time of the nn layers against PyTorch CPU on the same shapes.

    python benchmarks/bench_layers.py [--repeat 7] [--torch /work/torchvenv/bin/python]

Float32, NumPy arrays on the CPU (NumPy's BLAS with its default threads; 2 cores here). The
PyTorch side runs in a separate interpreter (benchmarks/torch_layers.py, torch.set_num_threads(2))
so that torch is never imported with the package. Prints a Markdown table: best-of-``repeat``
milliseconds (forward, backward, total), torch's total and the ratio ours / torch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from minimaskrcnn.nn import Conv2d, ConvTranspose2d, GroupNorm

TORCH_PYTHON = "/work/torchvenv/bin/python"

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


def time_case(make, shape, repeat):
    """Best-of-``repeat`` seconds of forward, backward and forward+backward (after 2 warm-ups)."""
    layer = make()
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    best = [np.inf, np.inf, np.inf]
    for i in range(repeat + 2):
        t0 = time.perf_counter()
        y, cache = layer.forward(x)
        t1 = time.perf_counter()
        layer.backward(np.ones_like(y), cache)
        t2 = time.perf_counter()
        del cache
        layer.zero_grad()
        if i >= 2:
            best = [min(best[0], t1 - t0), min(best[1], t2 - t1), min(best[2], t2 - t0)]
    return best


def torch_times(python: str, repeat: int) -> dict:
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_layers.py")
    if not os.path.exists(python):
        return {}
    out = subprocess.run([python, script, "--repeat", str(repeat)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--torch", default=TORCH_PYTHON, help="python of the torch venv ('' to skip)")
    args = ap.parse_args(argv)
    ours = {name: time_case(make, shape, args.repeat) for name, (make, shape) in CASES.items()}
    theirs = torch_times(args.torch, args.repeat) if args.torch else {}
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; numpy {np.__version__}")
    print("| layer (fwd+bwd, float32) | ours fwd ms | ours bwd ms | ours total ms | torch ms "
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
