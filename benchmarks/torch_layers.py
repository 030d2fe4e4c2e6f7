"""PyTorch CPU side of benchmarks/bench_layers.py (run with the separate torch venv).

    $TORCH_VENV/bin/python benchmarks/torch_layers.py [--threads 2] [--repeat 7] [--cpu-time]

Prints one JSON object {case name: best forward+backward seconds} on stdout. Float32,
torch.set_num_threads(2), same shapes as bench_layers.CASES. Never imported by the package.
"""

import argparse
import json
import time

import torch


def cases():
    return {
        "conv3x3 (4,32,128,128)->32": (
            lambda: torch.nn.Conv2d(32, 32, 3, padding=1, bias=False), (4, 32, 128, 128)),
        "conv3x3 (4,64,32,32)->64": (
            lambda: torch.nn.Conv2d(64, 64, 3, padding=1, bias=False), (4, 64, 32, 32)),
        "conv1x1 s2 (4,64,64,64)->128": (
            lambda: torch.nn.Conv2d(64, 128, 1, stride=2, bias=False), (4, 64, 64, 64)),
        "groupnorm(8,32) (4,32,128,128)": (
            lambda: torch.nn.GroupNorm(8, 32), (4, 32, 128, 128)),
        "convT k2s2 (64,64,14,14)->64": (
            lambda: torch.nn.ConvTranspose2d(64, 64, 2, stride=2), (64, 64, 14, 14)),
    }


def time_case(make, shape, repeat, clock=time.perf_counter):
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(*shape, dtype=torch.float32, requires_grad=True)
    dy = None
    best = float("inf")
    for i in range(repeat + 2):
        if dy is None:
            dy = torch.randn(layer(x).shape)
        t0 = clock()
        y = layer(x)
        y.backward(dy)
        dt = clock() - t0
        if i >= 2:
            best = min(best, dt)
        layer.zero_grad()
        x.grad = None
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--cpu-time", action="store_true", help="process CPU time, not wall time")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.cpu_time else time.perf_counter
    out = {name: time_case(make, shape, args.repeat, clock) for name, (make, shape) in cases().items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
