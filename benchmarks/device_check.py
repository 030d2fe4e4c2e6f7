"""The device check: one run on a machine with one NVIDIA GPU, one markdown report.

Parts, most important first, each in its own process under its own time budget (a hang or a
crash in one part leaves the others and the report intact); the whole run stays under 8 minutes:

1. ``env``    versions, the GPU, which kernel tiers can run and why not (seconds).
2. ``tests``  ``pytest -m "gpu or cuda"`` without the simulator: the CuPy and Numba CUDA tiers
              against the NumPy reference on the real GPU, the deterministic backward passes
              repeatable bit for bit.
3. ``bench``  roi_align forward/backward (atomic and deterministic), nms and box_iou per GPU
              tier (``cuda``, ``cupy``) and torchvision's CUDA ops beside them when torch sees the
              GPU, on the inputs of ``roi_align_data.py`` / ``boxes_nms_data.py``; outputs
              compared with torchvision's, deterministic backward repeated and compared bitwise.
4. ``train``  nuclei-mini for up to 300 iterations on the GPU (CuPy arrays through the Python
              API: ``model.to(cupy)``, SGD, the preset's schedule) from the seeds of the
              CPU run, beside the first 15 CPU iterations: step times and the loss curves.

The report goes to stdout and to ``$OUT/device_report.md`` (``--out`` or ``$OUT``, else the
current directory), with the tests' full log beside it (``device_tests.log``).

On the device machine (no package registry there; pycocotools travels as a wheel)::

    bash benchmarks/device_check.sh fetch     # here, once: wheels into .whl/ (git-ignored)
    # device tool: run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=540)

``python benchmarks/device_check.py --parts env,bench`` runs a subset; without a GPU every part
reports what it could not do and why, and the script still exits 0 (the report is the result).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

PARTS = ("env", "tests", "bench", "train")
BUDGETS = {"env": 45, "tests": 180, "bench": 100, "train": 135}  # seconds; 460 s in all
TITLES = {"env": "Environment", "tests": "GPU tests (`pytest -m \"gpu or cuda\"`)",
          "bench": "Timings (milliseconds, median after one warm-up call)",
          "train": "nuclei-mini on the GPU"}
TOTAL_LIMIT = 470


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


class Fragment:
    """A part's markdown, written through to a file as it grows (so a timeout keeps it)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.lines: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)
        if self.path:
            self.path.write_text("\n".join(self.lines) + "\n")
        else:
            print("\n".join(lines), flush=True)


def table(header, rows) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def fmt_ms(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}")


def try_import(name):
    try:
        return __import__(name), None
    except Exception as e:  # noqa: BLE001 (any import failure is a reason to report)
        return None, f"{type(e).__name__}: {e}".splitlines()[0]


def gpu_array_module():
    """``(cupy or None, why not)``: CuPy only if it imports and sees a GPU."""
    cupy, err = try_import("cupy")
    if cupy is None:
        return None, err
    try:
        return (cupy, None) if cupy.is_available() else (None, "cupy.is_available() is False")
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {e}"


def torch_cuda():
    """``(torch, torchvision, None)`` when torch sees a CUDA GPU, else ``(None, None, why)``."""
    torch, err = try_import("torch")
    if torch is None:
        return None, None, err
    tv, err = try_import("torchvision")
    if tv is None:
        return None, None, err
    if not torch.cuda.is_available():
        return None, None, "torch.cuda.is_available() is False"
    return torch, tv, None


# --------------------------------------------------------------------------------------------
# Part 1: environment
# --------------------------------------------------------------------------------------------


def part_env(frag: Fragment, args) -> None:
    rows = [("python", sys.version.split()[0]), ("platform", platform.platform())]
    for name in ("numpy", "numba", "numba_cuda", "cupy", "torch", "torchvision"):
        mod, err = try_import(name)
        rows.append((name, getattr(mod, "__version__", "?") if mod else f"missing ({err})"))
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20)
        rows.append(("nvidia-smi", out.stdout.strip() or out.stderr.strip() or "no output"))
    except Exception as e:  # noqa: BLE001
        rows.append(("nvidia-smi", f"not run ({type(e).__name__})"))
    rows.append(("NUMBA_ENABLE_CUDASIM", os.environ.get("NUMBA_ENABLE_CUDASIM", "unset")))
    rows.append(("CUDA_HOME", os.environ.get("CUDA_HOME", "unset")))
    try:
        from numba.cuda.cudadrv import nvvm

        rows.append(("libNVVM (numba-cuda)", "found" if nvvm.is_available() else "not found"))
    except Exception as e:  # noqa: BLE001
        rows.append(("libNVVM (numba-cuda)", f"error: {e}"))
    try:
        from numba import cuda

        if cuda.is_available():
            dev = cuda.get_current_device()
            rows.append(("numba.cuda device", f"{dev.name.decode() if isinstance(dev.name, bytes) else dev.name}, "
                         f"cc {dev.compute_capability}"))
        else:
            rows.append(("numba.cuda device", "none (cuda.is_available() is False)"))
    except Exception as e:  # noqa: BLE001
        rows.append(("numba.cuda device", f"error: {type(e).__name__}: {e}"))
    from minimaskrcnn import backend

    for t in backend.TIERS:
        reason = backend.tier_unavailable_reason(t)
        rows.append((f"tier {t}", "available" if reason is None else f"unavailable: {reason}"))
    rows.append(("git commit", git_commit()))
    frag.add(*table(("what", "value"), [(a, str(b).replace("|", "/")) for a, b in rows]))


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown (no .git here)"
    except Exception:  # noqa: BLE001
        return "unknown"


# --------------------------------------------------------------------------------------------
# Part 2: the GPU tests (run by the parent: pytest is its own process)
# --------------------------------------------------------------------------------------------


def run_tests(budget: float, out_dir: Path, marker: str, paths: list[str]) -> tuple[list[str], str]:
    """Markdown lines and a status for ``pytest -m marker``, under ``budget`` seconds."""
    junit = Path(tempfile.mkdtemp()) / "junit.xml"
    log_path = out_dir / "device_tests.log"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marker, "-rfEs",
           "--continue-on-collection-errors", f"--junitxml={junit}", *paths]
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)  # the real GPU, never the simulator
    env.setdefault("MPLBACKEND", "Agg")
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        status = "done"
        try:
            proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"timed out after {budget:.0f} s"
    secs = time.perf_counter() - t0
    text = log_path.read_text(errors="replace")
    last = [ln for ln in text.splitlines() if ln.strip()][-1:] or ["(no output)"]
    lines = [f"`python -m pytest -m {marker!r} {' '.join(paths)}`: "
             f"exit code {proc.returncode}, {secs:.0f} s. Last line: `{last[0].strip('= ')}`", ""]
    if junit.exists():
        root = ET.parse(junit).getroot()
        suite = root if root.tag == "testsuite" else root.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        lines.append(f"{counts['tests']} run: {counts['tests'] - counts['failures'] - counts['errors'] - counts['skipped']} "
                     f"passed, {counts['failures']} failed, {counts['errors']} errors, "
                     f"{counts['skipped']} skipped.")
        bad, skipped = [], {}
        for case in suite.iter("testcase"):
            name = f"{case.get('classname', '')}::{case.get('name')}"
            for tag in ("failure", "error"):
                el = case.find(tag)
                if el is not None:
                    msg = (el.get("message") or "").splitlines()[:1]
                    bad.append(f"- {tag}: `{name}`: {msg[0][:200] if msg else ''}")
            el = case.find("skipped")
            if el is not None:
                reason = (el.get("message") or "")[:160]
                skipped[reason] = skipped.get(reason, 0) + 1
        if bad:
            lines += ["", "Failures (full log: device_tests.log):", *bad[:40]]
            if len(bad) > 40:
                lines.append(f"- ... and {len(bad) - 40} more")
        if skipped:
            lines += ["", "Skip reasons:", *(f"- {n} x {r}" for r, n in sorted(skipped.items()))]
        passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        if counts["failures"] or counts["errors"]:
            status = "FAILED" if status == "done" else status
        elif passed == 0 and status == "done":
            status = "nothing ran (all skipped: no GPU tier here?)"
    else:
        lines += ["No junit report (timed out or crashed); log tail:", "```",
                  *text.splitlines()[-30:], "```"]
        status = status if status != "done" else "no report"
    return lines, status


# --------------------------------------------------------------------------------------------
# Part 3: timings
# --------------------------------------------------------------------------------------------


def part_bench(frag: Fragment, args) -> None:
    import numpy as np
    from boxes_nms_data import IOU_SIZE, NMS_SIZES, NMS_THRESHOLD, make_boxes
    from boxes_nms_data import REPEATS as BOX_REPEATS
    from roi_align_data import ALIGNED, CASES, REPEATS, SAMPLING_RATIO, make_inputs
    from timing import time_ms

    from minimaskrcnn import backend
    from minimaskrcnn.ops import box_iou, nms, roi_align, roi_align_backward

    cupy, cupy_why = gpu_array_module()
    torch, tv, torch_why = torch_cuda()
    tiers = [t for t in ("cuda", "cupy") if backend.tier_unavailable_reason(t) is None]
    if backend.cuda_simulator_enabled():
        tiers = [t for t in tiers if t != "cuda"]
    notes = [f"- tier `{t}`: not timed ({backend.tier_unavailable_reason(t)})"
             for t in ("cuda", "cupy") if t not in tiers]
    if torch is None:
        notes.append(f"- torchvision CUDA: not timed ({torch_why})")
    if not tiers and torch is None:
        frag.add("Nothing to time: no GPU tier and no torch CUDA here.", "", *notes)
        return
    cases = CASES[:1] if args.quick else CASES
    nms_sizes = NMS_SIZES[:1] if args.quick else NMS_SIZES
    if cupy is not None:
        to_dev, sync = cupy.asarray, cupy.cuda.Device().synchronize
        notes.append("- inputs are CuPy arrays for both tiers (the `cuda` tier takes them "
                     "zero-copy), so no host-device copies are timed")
    else:
        from numba import cuda

        to_dev, sync = (lambda a: a), cuda.synchronize
        notes.append(f"- no CuPy ({cupy_why}): the `cuda` tier gets NumPy arrays, so its times "
                     "include host-device copies")

    def host(a):
        return backend.to_numpy(a) if backend.is_cupy_array(a) else np.asarray(a)

    cols = ["case", "pass"] + [f"{t}" for t in tiers] + (["torchvision CUDA"] if torch else [])
    frag.add(*notes, "")
    frag.add(f"### nms (IoU {NMS_THRESHOLD}) and box_iou (float32, median of {BOX_REPEATS})",
             "")
    rows, agree = [], []
    boxes, _ = make_boxes(IOU_SIZE, seed=0)
    db = to_dev(boxes)
    r = [f"box_iou {IOU_SIZE}x{IOU_SIZE}"]
    ious = {t: host(box_iou(db, db, tier=t)) for t in tiers}
    r += [fmt_ms(time_ms(lambda t=t: box_iou(db, db, tier=t), BOX_REPEATS, sync)) for t in tiers]
    if torch is not None:
        tb = torch.from_numpy(boxes).cuda()
        r.append(fmt_ms(time_ms(lambda: tv.ops.box_iou(tb, tb), BOX_REPEATS,
                                torch.cuda.synchronize)))
        ref = tv.ops.box_iou(tb, tb).cpu().numpy()
        agree += [(f"box_iou {IOU_SIZE}", t, f"max abs diff {np.abs(ious[t] - ref).max():.2e}")
                  for t in tiers]
    rows.append(r)
    for n in nms_sizes:
        boxes, scores = make_boxes(n, seed=n)
        db, ds = to_dev(boxes), to_dev(scores)
        r = [f"nms {n}"]
        keeps = {t: host(nms(db, ds, NMS_THRESHOLD, tier=t)) for t in tiers}
        r += [fmt_ms(time_ms(lambda t=t: nms(db, ds, NMS_THRESHOLD, tier=t), BOX_REPEATS, sync))  # noqa: B023
              for t in tiers]
        if torch is not None:
            tb, ts = torch.from_numpy(boxes).cuda(), torch.from_numpy(scores).cuda()
            r.append(fmt_ms(time_ms(lambda: tv.ops.nms(tb, ts, NMS_THRESHOLD),  # noqa: B023
                                    BOX_REPEATS, torch.cuda.synchronize)))
            ref = tv.ops.nms(tb, ts, NMS_THRESHOLD).cpu().numpy()
            agree += [(f"nms {n}", t, "same kept boxes" if np.array_equal(keeps[t], ref) else
                       f"**differs**: {len(keeps[t])} kept vs {len(ref)}") for t in tiers]
        rows.append(r)
    frag.add(*table(["op"] + cols[2:], rows))
    if agree:
        frag.add("", *table(("op", "tier", "against torchvision CUDA"), agree))

    frag.add("", f"### roi_align (float32, sampling_ratio={SAMPLING_RATIO}, aligned={ALIGNED}, "
             f"median of {REPEATS})", "")

    def roi_case(name, shape, n, size, stride):
        """Table rows and checks of one roi_align case."""
        x, rois, grad = make_inputs(shape, n, size, stride)
        a = (size, 1.0 / stride, SAMPLING_RATIO, ALIGNED)
        dx, drois, dgrad = to_dev(x), to_dev(rois), to_dev(grad)
        fwd, bwd, det, outs, checks = {}, {}, {}, {}, []
        for t in tiers:
            outs[t] = host(roi_align(dx, drois, *a, tier=t))
            fwd[t] = time_ms(lambda t=t: roi_align(dx, drois, *a, tier=t), REPEATS, sync)
            bwd[t] = time_ms(lambda t=t: roi_align_backward(dgrad, drois, shape, *a, tier=t),
                             REPEATS, sync)
            g1 = host(roi_align_backward(dgrad, drois, shape, *a, tier=t, deterministic=True))
            t0 = time.perf_counter()  # the gather can be slow: one warm-up, one timed run
            g2 = roi_align_backward(dgrad, drois, shape, *a, tier=t, deterministic=True)
            sync()
            det[t] = 1e3 * (time.perf_counter() - t0)
            g2 = host(g2)
            ga = host(roi_align_backward(dgrad, drois, shape, *a, tier=t))
            checks.append((name, t, "yes" if np.array_equal(g1, g2) else "**NO**",
                           f"{np.abs(g1 - ga).max():.2e}"))
        if torch is not None:
            tx = torch.from_numpy(x).cuda().requires_grad_(True)
            tr, tg = torch.from_numpy(rois).cuda(), torch.from_numpy(grad).cuda()
            with torch.no_grad():
                fwd["torch"] = time_ms(lambda: tv.ops.roi_align(tx, tr, *a), REPEATS,
                                       torch.cuda.synchronize)
                ref = tv.ops.roi_align(tx, tr, *a).cpu().numpy()
            out = tv.ops.roi_align(tx, tr, *a)
            bwd["torch"] = time_ms(lambda: torch.autograd.grad(out, tx, tg, retain_graph=True),
                                   REPEATS, torch.cuda.synchronize)
            checks += [(name, f"{t} forward vs torchvision", "-",
                        f"{np.abs(outs[t] - ref).max():.2e}") for t in tiers]
        keys = tiers + (["torch"] if torch is not None else [])
        rows = [(name, "forward", *(fmt_ms(fwd.get(k)) for k in keys)),
                (name, "backward", *(fmt_ms(bwd.get(k)) for k in keys)),
                (name, "backward, deterministic (1 run)", *(fmt_ms(det.get(k)) for k in tiers),
                 *(["-"] if torch is not None else []))]
        return rows, checks

    rows, checks = [], []
    head = len(frag.lines)
    for case in cases:
        r, c = roi_case(*case)
        rows += r
        checks += c
        frag.lines = frag.lines[:head]  # rewrite the table as it grows (kept if we time out)
        frag.add(*table(cols, rows))
    frag.add("", "Deterministic backward, run twice on the same inputs:", "",
             *table(("case", "tier / check", "bitwise repeatable", "max abs diff (vs atomic / "
                     "torchvision)"), checks))


# --------------------------------------------------------------------------------------------
# Part 4: training on the GPU (placeholder until the CuPy model path exists)
# --------------------------------------------------------------------------------------------


def _train_run(xp, iters: int, deadline: float):
    """nuclei-mini from the training loop's seeds (stream MODEL_INIT for the weights, the
    per-image SAMPLING streams) on the array module ``xp``, through the Python API:
    ``model.to(xp)``, SGD and the warm-up schedule of the preset, the loader's batches (host
    arrays, copied to the device by the model). Returns ``(total losses, step seconds, last
    losses)``; stops early at ``deadline`` (``time.monotonic()``)."""
    import numpy as np

    from minimaskrcnn.config import get_preset
    from minimaskrcnn.data import load_sample
    from minimaskrcnn.data.loader import Stream, TrainBatches, sample_rng
    from minimaskrcnn.model import build_model
    from minimaskrcnn.training.optim import SGD, WarmupMultiStepLR

    cfg = get_preset("nuclei-mini")
    tc = cfg.train
    batches = TrainBatches.from_config(load_sample("train"), tc)
    model = build_model(cfg, sample_rng(tc.seed, Stream.MODEL_INIT, 0)).to(xp)
    opt = SGD(model.named_parameters(), lr=tc.base_lr, momentum=tc.momentum,
              weight_decay=tc.weight_decay)
    sched = WarmupMultiStepLR(opt, milestones=tc.milestones, gamma=tc.gamma,
                              warmup_factor=tc.warmup_factor, warmup_iters=tc.warmup_iters)
    curve, times, losses = [], [], {}
    for t in range(iters):
        batch = batches.batch(t)  # host crops (not timed: the loader's work, not the step's)
        images, targets = [b[0] for b in batch], [b[1] for b in batch]
        rngs = [sample_rng(tc.seed, Stream.SAMPLING, p) for p in batches.positions(t)]
        t0 = time.perf_counter()
        with np.errstate(over="ignore", invalid="ignore"):
            _, losses, cache = model.forward_train(images, targets, rngs)
            model.zero_grad()
            model.backward(None, cache)
            del cache
            opt.step()
        sched.step()
        if xp is not np:
            xp.cuda.get_current_stream().synchronize()
        times.append(time.perf_counter() - t0)
        curve.append(float(sum(losses.values())))
        if time.monotonic() > deadline:
            break
    return curve, times, losses


def part_train(frag: Fragment, args) -> None:
    """nuclei-mini on the GPU (CuPy arrays, every op on its default GPU tier) against the CPU
    (NumPy, Numba tiers) from the same seeds: step times and the loss curves."""
    import numpy as np

    cupy, why = gpu_array_module()
    if cupy is None:
        frag.add(f"skipped: no GPU for CuPy ({why}).")
        return
    start = time.monotonic()
    budget = BUDGETS["train"] - 10  # leave time to write the report
    n_gpu = 40 if args.quick else 300
    n_cpu = 4 if args.quick else 15
    frag.add(f"nuclei-mini, batch of the preset, seeds of `minimaskrcnn train` (seed 0); "
             f"GPU: up to {n_gpu} iterations, CPU: the first {n_cpu}; a step is forward, "
             "backward and SGD step (loader excluded), GPU steps timed to a stream sync.", "")
    from minimaskrcnn.backend import blas_threads

    with blas_threads(1):  # as `minimaskrcnn train` runs
        cpu_curve, cpu_times, _ = _train_run(np, n_cpu, start + 0.3 * budget)
    gpu_curve, gpu_times, last = _train_run(cupy, n_gpu, start + budget)
    warm = 3  # first iterations compile Numba / CuPy kernels

    def med(ts):
        ts = ts[warm:] if len(ts) > warm else ts
        return 1e3 * float(np.median(ts)) if ts else None

    k = min(len(cpu_curve), len(gpu_curve))
    rel = [abs(g - c) / max(abs(c), 1e-12) for c, g in zip(cpu_curve[:k], gpu_curve[:k],
                                                           strict=True)]
    frag.add(*table(["run", "iterations", "median step ms", "first step ms", "loss first",
                     "loss last"],
                    [["CPU (NumPy, numba)", len(cpu_curve), fmt_ms(med(cpu_times)),
                      fmt_ms(1e3 * cpu_times[0]), f"{cpu_curve[0]:.4f}", f"{cpu_curve[-1]:.4f}"],
                     ["GPU (CuPy, cupy/cuda)", len(gpu_curve), fmt_ms(med(gpu_times)),
                      fmt_ms(1e3 * gpu_times[0]), f"{gpu_curve[0]:.4f}",
                      f"{gpu_curve[-1]:.4f}"]]), "")
    frag.add(f"Same iterations, CPU vs GPU total loss: largest relative difference "
             f"{max(rel):.2e} over the first {k} (iteration 0: {rel[0]:.2e}; they drift apart "
             "with float32 rounding, atomics and NMS ties, as any two devices do).", "")
    step = max(1, len(gpu_curve) // 15)
    frag.add("GPU loss curve (total, every " f"{step} iterations): "
             + ", ".join(f"{t}: {gpu_curve[t]:.3f}" for t in range(0, len(gpu_curve), step)),
             "", "Last GPU losses: " + ", ".join(f"{k} {v:.4f}" for k, v in last.items()))
    w = min(20, len(gpu_curve) // 2)
    if w:
        first, final = float(np.mean(gpu_curve[:w])), float(np.mean(gpu_curve[-w:]))
        frag.add("", f"Mean of the first {w} vs the last {w}: {first:.4f} -> {final:.4f} "
                 f"({'down' if final < first else 'NOT down'}).")


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

PART_FUNCS = {"env": part_env, "bench": part_bench, "train": part_train}


def run_child(name: str, budget: float, args, tmp: Path) -> tuple[list[str], str]:
    frag_path = tmp / f"{name}.md"
    log_path = tmp / f"{name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name,
           "--fragment", str(frag_path)] + (["--quick"] if args.quick else [])
    env = dict(os.environ)
    if name != "env":
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=budget)
            status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"timed out after {budget:.0f} s (partial)"
    lines = frag_path.read_text().splitlines() if frag_path.exists() else []
    if status != "done":
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        lines += ["", "Output tail:", "```", *tail, "```"]
    return lines, status


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"comma-separated subset of {','.join(PARTS)} (always run in that order)")
    p.add_argument("--out", default=os.environ.get("OUT") or ".",
                   help="folder for device_report.md and device_tests.log (default: $OUT or .)")
    p.add_argument("--marker", default="gpu or cuda", help="pytest -m expression of the tests part")
    p.add_argument("--test-paths", default="tests", help="what the tests part collects")
    p.add_argument("--quick", action="store_true", help="first roi_align case and NMS size only")
    p.add_argument("--total", type=float, default=TOTAL_LIMIT,
                   help=f"seconds for all parts together (default {TOTAL_LIMIT})")
    for part in PARTS:
        p.add_argument(f"--budget-{part}", type=float, default=BUDGETS[part],
                       help=f"seconds for the {part} part (default {BUDGETS[part]})")
    p.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this process
    p.add_argument("--fragment", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.part:  # child process
        frag = Fragment(Path(args.fragment) if args.fragment else None)
        try:
            PART_FUNCS[args.part](frag, args)
        except Exception:
            frag.add("", "```", *traceback.format_exc().splitlines()[-15:], "```")
            return 1
        return 0

    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = ["# minimaskrcnn device check", "",
              f"{now}, host `{platform.node()}`, `python benchmarks/device_check.py "
              f"--parts {','.join(parts)}`", ""]
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, part in enumerate(p for p in PARTS if p in parts):
            left = args.total - (time.perf_counter() - start)
            budget = min(getattr(args, f"budget_{part}"), left)
            t0 = time.perf_counter()
            if budget < 5:
                lines, status = ["skipped: the time for the whole check is spent"], "skipped"
            elif part == "tests":
                lines, status = run_tests(budget, out_dir, args.marker, args.test_paths.split())
            else:
                lines, status = run_child(part, budget, args, Path(tmp))
            secs = time.perf_counter() - t0
            summary.append((part, status, f"{secs:.0f}", f"{budget:.0f}"))
            report += [f"## {i + 1}. {TITLES[part]}", "", *lines, ""]
            print(f"[device_check] {part}: {status} in {secs:.0f} s", file=sys.stderr, flush=True)
    report += ["## Parts", "", *table(("part", "status", "seconds", "budget"), summary), "",
               f"Total {time.perf_counter() - start:.0f} s."]
    text = "\n".join(report) + "\n"
    (out_dir / "device_report.md").write_text(text)
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
