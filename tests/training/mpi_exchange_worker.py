"""Run by tests/training/test_mpi_training.py under ``mpiexec -n 2``: one iteration's losses and
gradients of a tiny Mask R-CNN on a batch whose crops differ in instances, in one process (each
rank computes the whole batch) and on two ranks with the crops dealt by ``balance_batch`` and
the mask head's RoIs evened out by ``RoIExchange``, for each mask head variant. Rank 0 prints
one JSON line per variant: the largest loss and relative gradient differences and the RoIs the
ranks passed to each other."""

import dataclasses
import json

import numpy as np

from minimaskrcnn.config import Config, TrainConfig
from minimaskrcnn.data.loader import Stream, sample_rng
from minimaskrcnn.distributed import (
    RoIExchange,
    allreduce_gradients,
    allreduce_sum,
    balance_batch,
    collectives,
    get_comm,
)
from minimaskrcnn.model import build_model
from minimaskrcnn.testing.tiny import TINY, disc, target_from_masks


def batch():
    """Four 64x64 images with 1, 6, 1 and 2 discs: no split of whole images is even."""
    rng = np.random.default_rng(0)
    images, targets = [], []
    for n in (1, 6, 1, 2):
        masks = [disc(64, 64, *rng.uniform(12, 52, 2), rng.uniform(5, 9)) for _ in range(n)]
        images.append(rng.standard_normal((3, 64, 64)).astype(np.float32))
        targets.append(target_from_masks(masks, [1 + i % 2 for i in range(n)]))
    return images, targets


def main():
    comm = get_comm()
    moved = []  # every transfer the exchange plans
    plan = collectives.plan_roi_transfers

    def recording_plan(*args):
        transfers = plan(*args)
        moved.extend(transfers)
        return transfers

    collectives.plan_roi_transfers = recording_plan
    images, targets = batch()
    for name, over in (("fcn", {}), ("mlp", {"mask_head_type": "mlp", "mask_mlp_dims": (32,)}),
                       ("agnostic", {"mask_class_agnostic": True})):
        cfg = Config(name="tiny", model=dataclasses.replace(TINY, **over), train=TrainConfig())
        model = build_model(cfg, np.random.default_rng(0))
        rngs = [sample_rng(0, Stream.SAMPLING, k) for k in range(4)]
        _, one, cache = model.forward_train(images, targets, rngs)
        model.zero_grad()
        model.backward(None, cache)
        grads = {n: p.grad.copy() for n, p in model.named_parameters()}
        ks = balance_batch([t["boxes"].shape[0] for t in targets], comm)
        moved.clear()
        _, two, cache = model.forward_train(
            [images[k] for k in ks], [targets[k] for k in ks],
            [sample_rng(0, Stream.SAMPLING, k) for k in ks],
            sum_counts=lambda c: allreduce_sum(c, comm), roi_exchange=RoIExchange(comm, len(ks)))
        two = allreduce_sum(two, comm)
        model.zero_grad()
        model.backward(None, cache)
        allreduce_gradients(model, comm)
        worst = max(float(np.abs(p.grad - grads[n]).max() / max(np.abs(grads[n]).max(), 1e-12))
                    for n, p in model.named_parameters())
        if comm.is_main:
            print(json.dumps({"variant": name, "loss_diff": max(abs(one[k] - two[k]) for k in one),
                              "grad_rel_diff": worst, "moved": sum(n for _, _, n in moved),
                              "shares": comm.allgather(ks)}), flush=True)
        else:
            comm.allgather(ks)


if __name__ == "__main__":
    main()
