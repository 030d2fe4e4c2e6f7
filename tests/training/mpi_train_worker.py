"""Run by tests/training/test_mpi_training.py under ``mpiexec -n W`` (and in one process):
train or evaluate a tiny Mask R-CNN on generated shapes, as the test's scenario says.

    python mpi_train_worker.py SCENARIO OUT_DIR [ITERATIONS]

Scenarios: ``train`` (fresh run), ``resume`` (continue OUT_DIR's run to ITERATIONS),
``fail`` (rank 1 -- or the only rank -- raises at iteration 2), ``evaluate`` (metrics of OUT_DIR's
checkpoint on the val shapes, written as JSON to OUT_DIR/eval_W.json by rank 0).
"""

import dataclasses
import json
import os
import sys

import numpy as np

from minimaskrcnn.config import Config, EvalConfig, ModelConfig, TrainConfig
from minimaskrcnn.data import shapes
from minimaskrcnn.distributed import get_comm

TINY = ModelConfig(
    num_classes=3, stem_channels=8, stage_channels=(8, 8, 16, 16), gn_groups=4, fpn_channels=8,
    rpn_batch_size_per_image=32, rpn_pre_nms_top_n_train=100, rpn_pre_nms_top_n_test=50,
    rpn_post_nms_top_n_train=40, rpn_post_nms_top_n_test=30, box_batch_size_per_image=16,
    representation_size=16, mask_head_channels=8, detections_per_img=20,
)


def config(iterations):
    train = TrainConfig(batch_size=4, crop_size=64, iterations=iterations, base_lr=0.02,
                        warmup_iters=1, milestones=(100,), checkpoint_every=1, val_every=100,
                        log_every=1)
    return Config(name="tiny-mpi", model=TINY, train=train, eval=EvalConfig(max_dets=(10, 20, 20)))


def main():
    scenario, out = sys.argv[1], sys.argv[2]
    iterations = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    comm = get_comm()
    train_ds = shapes.shapes_dataset(12, seed=0)
    from minimaskrcnn.training.loop import train

    if scenario in ("train", "resume"):
        train(config(iterations), train_ds, out, resume=scenario == "resume", progress=False)
    elif scenario == "fail":
        from minimaskrcnn import build_model

        def factory(cfg, rng):
            model = build_model(cfg, rng)
            forward = model.forward_train
            calls = []

            def failing(*args, **kwargs):
                calls.append(1)
                if len(calls) == 3 and comm.rank == comm.size - 1:
                    raise ValueError("a bad record in this rank's share of the batch")
                return forward(*args, **kwargs)

            model.forward_train = failing
            return model

        train(config(iterations), train_ds, out, model_factory=factory, progress=False)
    elif scenario == "evaluate":
        from minimaskrcnn import build_model
        from minimaskrcnn.checkpoint import load_checkpoint
        from minimaskrcnn.evaluation import evaluate_model

        model = build_model(dataclasses.replace(config(iterations)).model, np.random.default_rng(0))
        with open(os.path.join(out, "last_checkpoint")) as f:
            load_checkpoint(os.path.join(out, f.read().strip()), model)
        val_ds = shapes.shapes_dataset(6, seed=1)
        metrics = evaluate_model(model, val_ds, config(iterations).eval)
        if comm.is_main:
            metrics.pop("_results")
            for k in ("seconds_per_image", "seconds_per_image_median"):
                metrics.pop(k)
            with open(os.path.join(out, f"eval_{comm.size}.json"), "w") as f:
                json.dump(metrics, f)
    else:
        raise SystemExit(f"unknown scenario {scenario}")


if __name__ == "__main__":
    main()
