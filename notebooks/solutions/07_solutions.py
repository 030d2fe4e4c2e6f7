"""Chapter 7 (training): the exercises' experiments, checked by asserts.

Each ``exercise_k()`` runs its experiment and returns the answer the chapter's stub cell
``check("07.k", answer)`` compares with. Run: ``python notebooks/solutions/07_solutions.py``.
"""

import dataclasses
import json
import os
import tempfile

import numpy as np

from minimaskrcnn import nn
from minimaskrcnn.config import get_preset, shorten_schedule
from minimaskrcnn.data import load_sample
from minimaskrcnn.training.loop import NonFiniteLossError, train
from minimaskrcnn.training.optim import SGD, warmup_multistep_lr

PRESET = get_preset("nuclei-mini")


def exercise_1():
    """nuclei-mini's schedule with a 50-iteration warm-up from 0.1x: the learning rate at
    iteration 20.

    Linear warm-up: lr = base (f (1 - a) + a), a = t / warmup_iters = 0.4, f = 0.1:
    0.01 (0.06 + 0.4) = 0.0046 (the preset's warm-up, 200 iterations from 0.001x, gives
    0.01 (0.0009 + 0.1) = 0.001009 there: the new one starts 100x higher and reaches the base
    rate four times sooner).
    """
    tc = dataclasses.replace(PRESET.train, warmup_iters=50, warmup_factor=0.1)
    lr = warmup_multistep_lr(20, tc.base_lr, tc.milestones, tc.gamma, tc.warmup_factor,
                             tc.warmup_iters)
    np.testing.assert_allclose(lr, 0.01 * (0.1 * 0.6 + 0.4), rtol=1e-12)
    preset_lr = warmup_multistep_lr(20, PRESET.train.base_lr, PRESET.train.milestones,
                                    PRESET.train.gamma, PRESET.train.warmup_factor,
                                    PRESET.train.warmup_iters)
    np.testing.assert_allclose(preset_lr, 0.001009, rtol=1e-12)
    return lr


def live_config(base_lr_factor: float = 1.0):
    """Section 3's live run: nuclei-mini's schedule cut to 40 iterations, 2 crops a batch."""
    cfg = shorten_schedule(PRESET, 40)
    return dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, batch_size=2, log_every=10, checkpoint_every=40,
        base_lr=cfg.train.base_lr * base_lr_factor))


def exercise_2():
    """Section 3's live training at ten times the learning rate (0.1): the iteration at which the
    divergence guard stops it (0-based, as its message counts).

    The warm-up lasts 4 iterations (lr 1e-4, 0.025, 0.05, 0.075, then 0.1). The first two
    iterations follow the normal run; the total loss is 6 at iterations 2-3, about 5,000 at
    iteration 4 (the mask loss first: about 5,000 of it) and 1e17 at iteration 5, and at
    iteration 6 the box decoding refuses the non-finite deltas: the guard stops the run there,
    naming the largest parameter (a mask-head convolution, near 1e15), and the log's last record
    carries the error.
    """
    with tempfile.TemporaryDirectory(prefix="minimaskrcnn_07_2_") as run_dir:
        try:
            train(live_config(10.0), load_sample("train"), run_dir, progress=False)
        except NonFiniteLossError as e:
            message = str(e)
        else:
            raise AssertionError("the run at lr x10 did not diverge")
        with open(os.path.join(run_dir, "log.jsonl")) as f:
            log = [json.loads(line) for line in f]
    stopped = log[-1]["iteration"]
    assert "error" in log[-1] and message.startswith(f"iteration {stopped}:"), message
    assert max(r["loss"] for r in log[:-1]) > 1000 * log[0]["loss"]  # it blew up first
    return stopped


def exercise_3():
    """SGD with momentum 0.9, lr 1, no weight decay, a constant gradient 1: the step tends to
    lr g / (1 - mu) = 10, and reaches 90 % of that after 22 steps.

    The velocity after t steps is 1 + 0.9 + ... + 0.9^(t-1) = (1 - 0.9^t) / 0.1, at least 9 when
    0.9^t <= 0.1, t >= ln 0.1 / ln 0.9 = 21.9. With momentum 0.9 the parameters move 10x the
    learning rate times the gradient once the gradient stays steady: the rate they see is 10x
    the nominal one. Starting at the full rate on an untrained network (large, consistent
    gradients) is what the warm-up avoids, and exercise 2 shows what 10x does.
    """
    p = nn.Param(np.zeros(1))
    opt = SGD([p], lr=1.0, momentum=0.9, weight_decay=0.0)
    steps = []
    for _ in range(40):
        before = float(p.data[0])
        p.grad[:] = 1.0
        opt.step()
        steps.append(before - float(p.data[0]))
    steps = np.array(steps)
    np.testing.assert_allclose(steps, (1 - 0.9 ** np.arange(1, 41)) / 0.1, rtol=1e-12)
    first = int(np.argmax(steps >= 0.9 * 10)) + 1  # steps counted from 1
    assert first == 22
    return first


def main():
    print("1. lr at iteration 20 with a 50-iteration warm-up from 0.1x:", exercise_1())
    print("2. the guard stops the lr x10 run at iteration", exercise_2())
    print("3. steps until the momentum step reaches 90 % of its limit:", exercise_3())


if __name__ == "__main__":
    main()
