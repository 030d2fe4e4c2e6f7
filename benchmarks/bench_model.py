"""Seconds per training iteration and per inference image of the whole Mask R-CNN, by stage.

Training: ``nuclei-mini``, batch 4 random 256x256 crops (with flips) of the embedded DSB2018
sample (``minimaskrcnn.data.load_sample("train")``), fixed batches, a warm-up of 2 iterations
(Numba compiles), then the median of ``--iters`` iterations of forward_train + backward (+ an SGD
step is not included: it is the training loop's). Stages (``StageTimer``): backbone+FPN, RPN
(head, anchor targets, losses, proposals), box head (RoI sampling, box RoIAlign, box head and
its losses), mask head (mask RoIAlign, mask head, mask targets, mask loss), backward (every
stage's backward, timed around ``model.backward``). Inference adds postprocess (the masks pasted
into the image).

Inference: ``model.predict`` on each image of the embedded val sample at native size, one image
at a time, median seconds per image. The model is untrained (init weights), so its
postprocess usually keeps the maximum of 500 detections and pastes 500 masks: a pessimistic
case next to a trained model's detections (torchvision's results were measured with a trained
model).

    python benchmarks/bench_model.py [--iters 5] [--images 4] [--repeats 3] [--blas-threads 1] \
        [--threads N] [--compare-threads] [--torch $TORCH_VENV/bin/python]

``--threads`` is the RoI heads' threads in ``predict`` (``MINIMASKRCNN_THREADS``; default the
cores) and torchvision's ``set_num_threads`` (default ``--blas-threads``); ``--compare-threads``
also times ``predict`` with 1 and with N RoI-head threads interleaved image by image in this
process; ``--repeats`` passes over the val images give the inference medians. The script prints
the machine's sgemm rate on 1 and on all cores, and runs torchvision before and after ours (the
machine's speed drifts).

``--torch`` also runs ``benchmarks/torch_model.py`` (torchvision's MaskRCNN built to the preset,
``torch.set_num_threads`` = ``--blas-threads``) on the same training batch and val images, in a
separate process, and prints its figures next to ours.

``--blas-threads`` sets ``OPENBLAS_NUM_THREADS`` (and the OMP/MKL equivalents) before NumPy is
imported. On the shared 2-core machine a multi-threaded OpenBLAS is ~10x *slower* for this model
(its threads spin while other jobs hold the cores): 1 is the default.

torchvision's results on the same preset (0.29 on 2 CPU threads, ``docs/nuclei-mini.md``): 1.35 s
per training iteration, 0.24-0.29 s per inference image.
"""

from __future__ import annotations

import argparse
import os

if __name__ == "__main__":  # must happen before NumPy loads its BLAS
    _ap = argparse.ArgumentParser(add_help=False)
    _ap.add_argument("--blas-threads", type=int, default=1)
    _ap.add_argument("--threads", type=int, default=None)
    _args = _ap.parse_known_args()[0]
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = str(_args.blas_threads)
    if _args.threads is not None:  # the RoI heads' threads in predict (backend.host_threads)
        os.environ["MINIMASKRCNN_THREADS"] = str(_args.threads)

import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from minimaskrcnn.backend import host_threads  # noqa: E402
from minimaskrcnn.config import get_preset  # noqa: E402
from minimaskrcnn.data import load_sample  # noqa: E402
from minimaskrcnn.data.transforms import sample_crop, standardize  # noqa: E402
from minimaskrcnn.model import StageTimer, build_model  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import sgemm_gflops, torch_env  # noqa: E402

STAGES = ("backbone_fpn", "rpn", "box_head", "mask_head", "backward")
INFERENCE_STAGES = ("backbone_fpn", "rpn", "box_head", "mask_head", "postprocess")


def training_batch(cfg, rng):
    ds = load_sample("train")
    images, targets = [], []
    while len(images) < cfg.train.batch_size:
        i = int(rng.integers(len(ds)))
        image, target = sample_crop(ds, i, cfg.train.crop_size, 0.5, 0.5, rng)
        if target["boxes"].shape[0] == 0:
            continue
        images.append(standardize(image))
        targets.append({k: target[k] for k in ("boxes", "labels", "masks")})
    return images, targets


def bench_training(model, images, targets, iters, rng):
    for _ in range(2):  # warm-up: Numba compilation, caches
        _, losses, cache = model.forward_train(images, targets, rng)
        model.backward(None, cache)
    totals, stages = [], {s: [] for s in STAGES}
    for _ in range(iters):
        model.zero_grad()
        timer = StageTimer()
        t0 = time.perf_counter()
        _, losses, cache = model.forward_train(images, targets, rng, timer=timer)
        with timer("backward"):
            model.backward(None, cache)
        totals.append(time.perf_counter() - t0)
        for s in STAGES:
            stages[s].append(timer.seconds.get(s, 0.0))
    n_gt = [t["boxes"].shape[0] for t in targets]
    n_fg = cache.roi_heads.mask.d_mask_logits.shape[0]  # foreground RoIs (the mask head's batch)
    return statistics.median(totals), {s: statistics.median(v) for s, v in stages.items()}, n_gt, n_fg


def bench_inference(model, n_images, repeats=1):
    ds = load_sample("val")
    times, stages, dets, sizes = [], {s: [] for s in INFERENCE_STAGES}, [], []
    model.predict([standardize(ds[0][0])])  # warm-up
    for rep in range(repeats):
        for i in range(min(n_images, len(ds))):
            image = standardize(ds[i][0])
            timer = StageTimer()
            t0 = time.perf_counter()
            out = model.predict([image], timer=timer)
            times.append(time.perf_counter() - t0)
            for s in stages:
                stages[s].append(timer.seconds.get(s, 0.0))
            if rep == 0:
                dets.append(out[0]["boxes"].shape[0])
                sizes.append(image.shape[1:])
    return statistics.median(times), {s: statistics.median(v) for s, v in stages.items()}, dets, sizes


def run_torch(python, images, targets, n_val, iters, threads, max_dets, repeats=1):
    """Write the batch and the val images to an .npz and time torchvision on them."""
    import json  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    val = load_sample("val")
    arrays = {"n_train": len(images), "n_val": min(n_val, len(val))}
    for i, (im, t) in enumerate(zip(images, targets, strict=True)):
        arrays.update({f"image{i}": im, f"boxes{i}": t["boxes"], f"labels{i}": t["labels"],
                       f"masks{i}": t["masks"]})
    for i in range(arrays["n_val"]):
        arrays[f"val{i}"] = standardize(val[i][0])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "batch.npz")
        np.savez(path, **arrays)
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_model.py")
        out = subprocess.run([python, script, path, "--threads", str(threads), "--iters", str(iters),
                              "--max-dets", str(max_dets), "--repeats", str(repeats)],
                             check=True, capture_output=True, text=True, env=torch_env()).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--blas-threads", type=int, default=1, help="OPENBLAS_NUM_THREADS")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads of one image's RoI heads in predict (MINIMASKRCNN_THREADS; "
                         "default: the cores) and torch.set_num_threads for torchvision "
                         "(default: --blas-threads)")
    ap.add_argument("--max-dets", type=int, default=None,
                    help="detections_per_img for the inference run (default: the preset's 500)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="passes over the val images for the inference medians")
    ap.add_argument("--compare-threads", action="store_true",
                    help="also time predict with 1 and with N RoI-head threads, interleaved "
                         "image by image in this process")
    ap.add_argument("--torch", default=None, help="python of the torch venv: time torchvision too")
    args = ap.parse_args()
    cfg = get_preset("nuclei-mini")
    rng = np.random.default_rng(0)
    model = build_model(cfg, rng)
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}, "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, "
          f"NUMBA_NUM_THREADS={os.environ.get('NUMBA_NUM_THREADS', 'default')}, "
          f"RoI-head threads in predict {host_threads(np.zeros(1, np.float32))}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"sgemm (2048^3 float32, NumPy's BLAS): {sgemm_gflops(1):.0f} GFLOP/s on 1 thread, "
          f"{sgemm_gflops(os.cpu_count()):.0f} on {os.cpu_count()}")
    images, targets = training_batch(cfg, np.random.default_rng(1))
    total, stages, n_gt, n_fg = bench_training(model, images, targets, args.iters, rng)
    print(f"\ntraining, nuclei-mini, batch 4 x 256x256 crops (instances per crop {n_gt}, "
          f"{n_fg} foreground RoIs in the mask head), "
          f"median of {args.iters} iterations, seconds")
    print("| stage | s/iter |\n|---|---|")
    for s in STAGES:
        print(f"| {s} | {stages[s]:.3f} |")
    print(f"| **total** | **{total:.3f}** |  (torchvision's results: 1.35)")

    if args.max_dets is not None:
        import dataclasses  # noqa: PLC0415

        model.config = dataclasses.replace(model.config, detections_per_img=args.max_dets)
        model.roi_heads.detections_per_img = args.max_dets
    torch_threads = args.blas_threads if args.threads is None else args.threads
    if args.torch:  # torchvision before and after ours: the machine's speed drifts
        ours_params = sum(p.data.size for p in model.parameters())
        before = run_torch(args.torch, images, targets, args.images, args.iters, torch_threads,
                           model.config.detections_per_img, args.repeats)
    t_img, stages, dets, sizes = bench_inference(model, args.images, args.repeats)
    print(f"\ninference, untrained nuclei-mini, val images at native size {sizes}, "
          f"detections {dets}, median seconds per image over {args.repeats} passes")
    print("| stage | s/image |\n|---|---|")
    print(f"| backbone_fpn | {stages['backbone_fpn']:.3f} |")
    print(f"| rpn | {stages['rpn']:.3f} |")
    print(f"| box head + postprocess_detections | {stages['box_head']:.3f} |")
    print(f"| mask head | {stages['mask_head']:.3f} |")
    print(f"| paste masks (transform.postprocess) | {stages['postprocess']:.3f} |")
    print(f"| **total** | **{t_img:.3f}** |  (torchvision's results: 0.24-0.29, trained model)")

    if args.compare_threads:  # RoI-head threads 1 and N image by image, in one process
        n = host_threads(np.zeros(1, np.float32))
        cmp = {}
        for threads in (1, n):
            os.environ["MINIMASKRCNN_THREADS"] = str(threads)
            cmp[threads] = ([], [])
        val = [standardize(x[0]) for x in (load_sample("val")[i] for i in range(args.images))]
        for _ in range(args.repeats):
            for image in val:
                for threads in cmp:
                    os.environ["MINIMASKRCNN_THREADS"] = str(threads)
                    timer = StageTimer()
                    t0 = time.perf_counter()
                    model.predict([image], timer=timer)
                    cmp[threads][0].append(time.perf_counter() - t0)
                    cmp[threads][1].append(timer.seconds["mask_head"])
        os.environ["MINIMASKRCNN_THREADS"] = str(n)
        print(f"\ninterleaved image by image, {args.repeats} passes: RoI-head threads, median "
              "s/image (mask head)")
        for threads, (tt, mh) in cmp.items():
            print(f"| {threads} | {statistics.median(tt):.3f} | ({statistics.median(mh):.3f}) |")

    if args.torch:
        after = run_torch(args.torch, images, targets, args.images, args.iters, torch_threads,
                          model.config.detections_per_img, args.repeats)
        for when, res in (("before", before), ("after", after)):
            print(f"\ntorchvision {when} ours, same batch and images, {res['threads']} thread(s): "
                  f"{res['params']:,} parameters (ours {ours_params:,}); training "
                  f"{res['train_s']:.3f} s/iter (ours {total:.3f}); inference "
                  f"{res['infer_s']:.3f} s/image with detections {res['dets']} (ours "
                  f"{t_img:.3f}, detections {dets})")


if __name__ == "__main__":
    main()
