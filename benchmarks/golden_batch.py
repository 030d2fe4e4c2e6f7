"""Everything a refactoring must leave unchanged, written to one ``.npz`` and compared bit for bit.

On a fixed batch of each reference network (``nuclei-mini`` on the embedded DSB2018 sample, and
its Table 2 variants; ``keypoints-mini`` on generated triangles): the parameter count and every
initial parameter, every loss of ``forward_train``, every parameter gradient of ``backward``, the
proposals, and ``predict``'s detections (boxes, scores, labels, masks, keypoints) on two images.

    python benchmarks/golden_batch.py --save before.npz      # on the old code
    python benchmarks/golden_batch.py --compare before.npz   # on the new code: prints a table,
                                                               # exits 1 unless all identical

Only public names are used (``build_model``, ``get_preset``, ``TrainBatches``, the model's
``forward_train`` / ``backward`` / ``predict`` / ``named_parameters``), so the same script runs on
both sides of a restructure.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import numpy as np

from minimaskrcnn import build_model
from minimaskrcnn.config import get_preset
from minimaskrcnn.data import load_sample
from minimaskrcnn.data.keypoint_shapes import keypoint_shapes_dataset
from minimaskrcnn.data.loader import TrainBatches, sample_rng


def _variants():
    base = get_preset("nuclei-mini")
    m = base.model
    yield "nuclei-mini", base, load_sample("train"), load_sample("val")
    for name, over in (("c5", {"features": "c5"}), ("mlp", {"mask_head_type": "mlp"}),
                       ("agnostic", {"mask_class_agnostic": True}),
                       ("roipool", {"roi_op": "pool"})):
        try:
            model_cfg = dataclasses.replace(m, **over)
        except (TypeError, ValueError) as e:  # a field renamed since: say so, skip
            print(f"variant {name}: {e}", file=sys.stderr)
            continue
        yield name, dataclasses.replace(base, model=model_cfg), load_sample("train"), None
    kp = get_preset("keypoints-mini")
    yield ("keypoints-mini", kp, keypoint_shapes_dataset(8, 0), keypoint_shapes_dataset(2, 1))


def collect() -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, cfg, train_ds, val_ds in _variants():
        model = build_model(cfg, sample_rng(0, 3, 0))
        params = list(model.named_parameters())
        out[f"{name}/param_count"] = np.array(sum(int(p.data.size) for _, p in params))
        for k, p in params:
            out[f"{name}/init/{k}"] = np.asarray(p.data)
        batches = TrainBatches.from_config(train_ds, cfg.train, image_scale=cfg.model.image_scale)
        batch = batches.batch(0)
        images = [im for im, _ in batch]
        targets = [t for _, t in batch]
        rngs = [sample_rng(0, 2, p) for p in batches.positions(0)]
        model.zero_grad()
        proposals, losses, cache = model.forward_train(images, targets, rngs)
        model.backward(None, cache)
        for k, v in losses.items():
            out[f"{name}/loss/{k}"] = np.array(v, dtype=np.float64)
        for i, p in enumerate(proposals):
            out[f"{name}/proposals/{i}"] = np.asarray(p)
        for k, p in params:
            out[f"{name}/grad/{k}"] = np.asarray(p.grad)
        if val_ds is not None:
            from minimaskrcnn.data.transforms import standardize
            ims = [standardize(val_ds.load_image(i)) for i in range(2)]
            for i, det in enumerate(model.predict(ims)):
                for k, v in det.items():
                    out[f"{name}/predict/{i}/{k}"] = np.asarray(v)
    return out


def _upgrade_names(ref: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Parameter names of a file saved before a renaming, as today's model names them
    (``minimaskrcnn.model.upgrade_state_names``, the checkpoints' conversion, where it exists):
    ``{net}/{init,grad}/{name}`` keys are translated, every other key is kept."""
    try:
        from minimaskrcnn.model import upgrade_state_names  # absent on the oldest code
    except ImportError:
        return ref
    out = {}
    for key, value in ref.items():
        parts = key.split("/", 2)
        if len(parts) == 3 and parts[1] in ("init", "grad"):
            parts[2] = next(iter(upgrade_state_names({parts[2]: None})))
            key = "/".join(parts)
        out[key] = value
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--save")
    g.add_argument("--compare")
    args = ap.parse_args()
    got = collect()
    if args.save:
        np.savez_compressed(args.save, **got)
        print(f"{len(got)} arrays written to {args.save}")
        return 0
    ref = _upgrade_names(dict(np.load(args.compare, allow_pickle=False)))
    missing = sorted(set(ref) - set(got))
    extra = sorted(set(got) - set(ref))
    differ = [k for k in sorted(set(ref) & set(got))
              if ref[k].shape != got[k].shape or ref[k].dtype != got[k].dtype
              or not np.array_equal(ref[k], got[k], equal_nan=True)]
    groups: dict[tuple[str, str], list[int]] = {}
    for k in sorted(set(ref) & set(got)):
        net, kind = k.split("/")[:2]
        g2 = groups.setdefault((net, kind), [0, 0])
        g2[0] += 1
        g2[1] += k in differ
    print(f"{'network':16} {'what':12} {'arrays':>7} {'differ':>7}")
    for (net, kind), (n, d) in groups.items():
        print(f"{net:16} {kind:12} {n:7d} {d:7d}")
    for k in differ[:20]:
        a, b = ref[k], got[k]
        if a.shape == b.shape and a.size:
            diff = np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))
            print(f"DIFFERS {k}: max |diff| {diff:.3g}")
        else:
            print(f"DIFFERS {k}: shape {a.shape} {a.dtype} vs {b.shape} {b.dtype}")
    for k in missing[:20]:
        print(f"MISSING {k}")
    for k in extra[:20]:
        print(f"EXTRA {k}")
    ok = not (differ or missing or extra)
    print("bit-identical" if ok else f"{len(differ)} differ, {len(missing)} missing, {len(extra)} extra")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
