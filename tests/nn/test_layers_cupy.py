"""The same layers on CuPy arrays give the NumPy results (needs a real GPU; skipped cleanly
otherwise). Layers are written once against ``xp = get_array_module(x)``."""

import numpy as np
import pytest

from minimaskrcnn.backend import tier_unavailable_reason
from minimaskrcnn.nn import (
    Conv2d,
    ConvTranspose2d,
    GroupNorm,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    Upsample,
)
from minimaskrcnn.nn.losses import binary_cross_entropy_with_logits, cross_entropy, smooth_l1_loss
from minimaskrcnn.training.optim import SGD

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(tier_unavailable_reason("cupy") is not None,
                       reason=str(tier_unavailable_reason("cupy"))),
]

LAYERS = [
    (lambda rng: Conv2d(3, 4, 3, padding=1, rng=rng), (2, 3, 9, 7)),
    (lambda rng: Conv2d(3, 4, 3, stride=2, padding=1, dilation=2, rng=rng), (2, 3, 9, 7)),
    (lambda rng: Conv2d(3, 4, 1, rng=rng), (2, 3, 5, 5)),
    (lambda rng: ConvTranspose2d(3, 4, 2, 2, rng=rng), (2, 3, 5, 6)),
    (lambda rng: GroupNorm(2, 4), (2, 4, 5, 5)),
    (lambda rng: MaxPool2d(3, 2, 1), (2, 3, 7, 7)),
    (lambda rng: Upsample(size=(7, 9)), (2, 3, 4, 4)),
    (lambda rng: Sequential(Linear(6, 5, rng=rng), ReLU()), (4, 6)),
]


@pytest.mark.parametrize("make, shape", LAYERS)
def test_layer_on_cupy_matches_numpy(make, shape):
    import cupy

    rng = np.random.default_rng(0)
    cpu, gpu = make(np.random.default_rng(1)), make(np.random.default_rng(1)).to(cupy)
    x = rng.standard_normal(shape).astype(np.float32)
    y, c = cpu.forward(x)
    yg, cg = gpu.forward(cupy.asarray(x))
    assert isinstance(yg, cupy.ndarray) and yg.dtype == np.float32
    np.testing.assert_allclose(cupy.asnumpy(yg), y, rtol=1e-4, atol=1e-5)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = cpu.backward(dy, c)
    dxg = gpu.backward(cupy.asarray(dy), cg)
    np.testing.assert_allclose(cupy.asnumpy(dxg), dx, rtol=1e-4, atol=1e-4)
    for (name, p), (_, q) in zip(cpu.named_parameters(), gpu.named_parameters(), strict=True):
        np.testing.assert_allclose(cupy.asnumpy(q.grad), p.grad, rtol=1e-4, atol=1e-4,
                                   err_msg=name)
    SGD(gpu.parameters(), lr=0.1).step()


def test_losses_on_cupy():
    import cupy

    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 3)).astype(np.float32) * 50
    t = (rng.uniform(size=(5, 3)) > 0.5).astype(np.float32)
    labels = np.array([0, 2, 1, -100, 2])
    for fn, args in ((binary_cross_entropy_with_logits, (t,)), (cross_entropy, (labels,)),
                     (smooth_l1_loss, (t,))):
        loss, grad = fn(x, *args)
        lg, gg = fn(cupy.asarray(x), *(cupy.asarray(a) for a in args))
        np.testing.assert_allclose(float(lg), float(loss), rtol=1e-5)
        np.testing.assert_allclose(cupy.asnumpy(gg), grad, rtol=1e-5, atol=1e-6)
