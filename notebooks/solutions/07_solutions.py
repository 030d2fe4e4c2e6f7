"""Chapter 7 (training), answers to the exercises, checked by asserts.

Run: ``python notebooks/solutions/07_solutions.py`` (``tests/test_solutions.py`` runs it too).
"""

import numpy as np

from minimaskrcnn import build_model, nn
from minimaskrcnn.config import get_preset
from minimaskrcnn.training.optim import SGD, warmup_multistep_lr

TRAIN = get_preset("nuclei-mini").train


def exercise_1():
    """nuclei-mini's learning rate at iterations 0, 100, 200, 1999, 2000 and 2666.

    Linear warm-up over 200 iterations from 0.001x: lr = 0.01 (0.001 (1 - a) + a), a = it / 200,
    so 1e-5 at 0 and 0.01 (0.0005 + 0.5) = 0.005005 at 100; 0.01 from 200 to 1999; x0.1 from the
    milestone itself: 0.001 at 2000, 0.0001 at 2666.
    """
    its = (0, 100, 200, 1999, 2000, 2666)
    by_hand = [1e-5, 0.005005, 0.01, 0.01, 0.001, 0.0001]
    got = [warmup_multistep_lr(it, TRAIN.base_lr, TRAIN.milestones, TRAIN.gamma, TRAIN.warmup_factor,
                               TRAIN.warmup_iters) for it in its]
    np.testing.assert_allclose(got, by_hand, rtol=1e-12)
    return dict(zip(its, got, strict=True))


def exercise_2():
    """Two SGD steps by hand (momentum 0.9, weight decay 1e-4, lr 0.1) on theta = 1 with a
    constant gradient 0.5.

    d = g + wd theta; v = mu v + d; theta -= lr v:
    step 1: d = 0.5001, v = 0.5001, theta = 0.94999;
    step 2: d = 0.5 + 0.000094999 = 0.500094999, v = 0.45009 + 0.500094999 = 0.950184999,
    theta = 0.94999 - 0.0950184999 = 0.8549715001.
    """
    p = nn.Param(np.array([1.0]))
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=1e-4)
    theta, v = 1.0, 0.0
    for _ in range(2):
        p.grad[:] = 0.5
        opt.step()
        d = 0.5 + 1e-4 * theta
        v = 0.9 * v + d
        theta -= 0.1 * v
        np.testing.assert_allclose(p.data[0], theta, rtol=1e-12)
    np.testing.assert_allclose(theta, 0.8549715001, rtol=1e-12)
    return theta


def exercise_3():
    """The FPN's parameters in nuclei-mini, by hand.

    Lateral 1x1 convs from C2..C5 (32, 64, 128, 256 channels) to 64, with bias:
    (32 + 64 + 128 + 256) 64 + 4 x 64 = 30,976; output 3x3 convs 64 -> 64 with bias:
    4 (64 64 9 + 64) = 147,712; total 178,688 of the model's 2,479,803.
    """
    by_hand = (32 + 64 + 128 + 256) * 64 + 4 * 64 + 4 * (64 * 64 * 9 + 64)
    model = build_model("nuclei-mini", np.random.default_rng(0))
    counts = {}
    for name, p in model.named_parameters():
        part = name.split(".")[0]
        counts[part] = counts.get(part, 0) + p.data.size
    assert by_hand == 178_688 == counts["fpn"]
    assert sum(counts.values()) == 2_479_803
    return by_hand


def main():
    print("1. learning rates:", exercise_1())
    print(f"2. theta after two SGD steps: {exercise_2():.10f}")
    print("3. FPN parameters:", exercise_3())


if __name__ == "__main__":
    main()
