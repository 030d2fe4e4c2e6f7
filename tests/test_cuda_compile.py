"""Every CUDA kernel compiles for real GPUs (PTX for compute capability 8.0 and 9.0), no GPU needed.

The kernels are found, not listed (``minimaskrcnn/testing/cuda_kernels.py``): every Numba CUDA
kernel and device function is compiled with its signatures from ``NUMBA_SIGNATURES`` through
NVVM, every CuPy ``RAW_MODULE`` with NVRTC, one test case each. A new kernel without signatures,
or a CuPy source that is not declared, fails ``test_every_*``. Skipped (with the reason) only
when libNVVM / libNVRTC cannot be loaded: the ``cuda-compile`` extra (also in ``dev``) installs
them. Not run under the simulator (``NUMBA_ENABLE_CUDASIM=1`` replaces the dispatchers).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from minimaskrcnn.backend import cuda_simulator_enabled
from minimaskrcnn.testing import cuda_kernels as ck

compile_check = pytest.mark.skipif(
    cuda_simulator_enabled(), reason="the Numba simulator replaces the kernels; compile without it")

SIMULATOR = cuda_simulator_enabled()
DISPATCHERS = {} if SIMULATOR else ck.numba_cuda_dispatchers()
CUPY_SOURCES, CUPY_PROBLEMS = ck.cupy_sources()
NVVM_REASON = None if SIMULATOR else ck.nvvm_unavailable_reason()
NVRTC_REASON = ck.nvrtc_unavailable_reason()


@pytest.mark.cuda_compile
@compile_check
def test_every_numba_kernel_has_signatures():
    assert DISPATCHERS, "no Numba CUDA kernel found: the enumeration is broken"
    missing = sorted(set(DISPATCHERS) - set(ck.NUMBA_SIGNATURES))
    stale = sorted(set(ck.NUMBA_SIGNATURES) - set(DISPATCHERS))
    assert not missing, (f"CUDA kernels / device functions without an entry in "
                         f"minimaskrcnn/testing/cuda_kernels.py NUMBA_SIGNATURES: {missing}")
    assert not stale, f"NUMBA_SIGNATURES entries for kernels that no longer exist: {stale}"


@pytest.mark.cuda_compile
@compile_check
def test_every_cupy_source_is_declared():
    assert CUPY_SOURCES, "no CuPy RAW_MODULE found: the enumeration is broken"
    assert not CUPY_PROBLEMS, "\n".join(CUPY_PROBLEMS)


@pytest.mark.cuda_compile
@compile_check
@pytest.mark.skipif(NVVM_REASON is not None, reason=NVVM_REASON or "")
@pytest.mark.parametrize("key", sorted(set(DISPATCHERS) & set(ck.NUMBA_SIGNATURES)))
def test_numba_kernel_compiles(key):
    signatures = ck.NUMBA_SIGNATURES[key]
    assert signatures, f"{key}: no signatures"
    ptx = ck.compile_numba(DISPATCHERS[key], signatures, ck.ARCHS)
    assert len(ptx) == len(signatures) * len(ck.ARCHS)
    for (sig, cc), code in ptx.items():
        assert f".target sm_{cc[0]}{cc[1]}" in code, (key, sig, cc)
        if not ck.is_device_function(DISPATCHERS[key]):
            assert ".entry" in code, (key, sig, cc)
        if "float64" not in sig:  # float32 stays float32: no silent promotion to double
            f64 = ck.float64_lines(code)
            assert not f64, (f"{key} ({sig}, sm_{cc[0]}{cc[1]}) computes in float64: "
                             f"{f64[:6]}")


@pytest.mark.cuda_compile
@compile_check
@pytest.mark.skipif(NVRTC_REASON is not None, reason=NVRTC_REASON or "")
@pytest.mark.parametrize("source", CUPY_SOURCES, ids=[s.key for s in CUPY_SOURCES])
def test_cupy_source_compiles(source):
    for cc in ck.ARCHS:
        ptx, log, lowered = ck.compile_nvrtc(source.code, source.options,
                                             source.name_expressions, cc,
                                             filename=f"{source.key}.cu")
        assert "warning" not in log.lower(), f"{source.key} compute_{cc[0]}{cc[1]}:\n{log}"
        assert f".target sm_{cc[0]}{cc[1]}" in ptx
        for name, mangled in lowered.items():
            assert re.search(rf"\.entry\s+{re.escape(mangled)}\b", ptx), (source.key, name)
            if "<float>" in name:  # the float instantiation stays float: no double
                f64 = ck.float64_lines(ck.ptx_entry(ptx, mangled))
                assert not f64, f"{source.key} {name} computes in float64: {f64[:6]}"
        if not source.name_expressions:  # extern "C" kernels keep their names
            for k in ck.global_kernels(source.code):
                assert re.search(rf"\.entry\s+{k}\b", ptx), (source.key, k)


# --------------------------------------------------------------------------------------------
# The table matches the launches: run every CUDA kernel through the public ops (simulator pass
# or a real GPU) and record the argument types it was launched with.
# --------------------------------------------------------------------------------------------


def _exercise_cuda_ops(dtype):
    """Call every public op that launches a Numba CUDA kernel once (tiny inputs, tier="cuda")."""
    from minimaskrcnn import ops

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 5, (4, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.5, 3, (4, 2))], axis=1).astype(dtype)
    scores = rng.random(4).astype(dtype)
    ops.box_area(boxes, tier="cuda")
    ops.box_iou(boxes, boxes, tier="cuda")
    ops.clip_boxes_to_image(boxes, (6, 6), tier="cuda")
    ops.remove_small_boxes(boxes, 1.0, tier="cuda")
    ops.nms(boxes, scores, 0.5, tier="cuda")
    x = rng.standard_normal((1, 1, 6, 6)).astype(dtype)
    rois = np.concatenate([np.zeros((4, 1), dtype), boxes], axis=1)
    g = rng.standard_normal((4, 1, 2, 2)).astype(dtype)
    for det in (False, True):
        ops.roi_align(x, rois, 2, 1.0, 2, tier="cuda")
        ops.roi_align_backward(g, rois, x.shape, 2, 1.0, 2, tier="cuda", deterministic=det)
        _, am = ops.roi_align(x, rois, 2, 1.0, 2, mode="max", tier="cuda", return_argmax=True)
        ops.roi_align_backward(g, rois, x.shape, 2, 1.0, 2, mode="max", argmax=am, tier="cuda",
                               deterministic=det)
        _, am = ops.roi_pool(x, rois, 2, 1.0, tier="cuda", return_argmax=True)
        ops.roi_pool_backward(g, rois, x.shape, 2, 1.0, argmax=am, tier="cuda",
                              deterministic=det)
    masks = rng.random((2, 6, 6)) > 0.5
    idx = np.array([0, 1, 0, 1])
    ops.project_masks_on_boxes(masks, boxes, idx, 2, tier="cuda")
    ops.project_masks_on_boxes(masks.astype(dtype), boxes, idx, 2, tier="cuda")
    logits = rng.standard_normal((4, 2, 2, 2)).astype(dtype)
    labels = np.array([1, 2, 1, 2])
    targets = rng.random((4, 2, 2)).astype(dtype)
    for mode in ("sigmoid", "softmax"):
        ops.mask_loss(logits, labels, targets, mode=mode, tier="cuda")
    ops.paste_masks_in_image(rng.random((2, 2, 2)).astype(dtype), boxes[:2], (6, 6), tier="cuda")
    kp = np.concatenate([rng.uniform(0, 6, (4, 2, 2)), np.full((4, 2, 1), 2.0)], axis=2)
    cells, valid = ops.keypoints_to_heatmap(kp.astype(dtype), boxes, 3, tier="cuda")
    valid[0, 0] = True
    ops.keypoint_loss(rng.standard_normal((4, 2, 3, 3)).astype(dtype), cells, valid, tier="cuda")
    ops.heatmaps_to_keypoints(rng.standard_normal((4, 2, 3, 3)).astype(dtype), boxes, tier="cuda")


@pytest.fixture
def recorded_launches(monkeypatch):
    """``{kernel key: {argument type tuples}}`` of the kernels launched while the test runs."""
    import numba

    launches: dict[str, set] = {}
    if cuda_simulator_enabled():
        from numba.cuda.simulator import kernel as sim

        original = sim.FakeCUDAKernel.__call__

        def call(self, *args):
            if not self._device and not sim._kernel_context:
                f = self.fn
                launches.setdefault(f"{f.__module__}.{f.__qualname__}", set()).add(
                    tuple(numba.typeof(a) for a in args))
            return original(self, *args)

        monkeypatch.setattr(sim.FakeCUDAKernel, "__call__", call)
        yield launches
    else:  # a real GPU: the kernels' dispatchers keep every signature they compiled
        yield launches
        for key, d in ck.numba_cuda_dispatchers().items():
            if not ck.is_device_function(d) and d.overloads:
                launches[key] = set(d.overloads)


def _launched_kernels() -> set[str]:
    """Keys of the CUDA kernels (not device functions), on the simulator or a real GPU."""
    if not cuda_simulator_enabled():
        return {k for k, d in ck.numba_cuda_dispatchers().items() if not ck.is_device_function(d)}
    import importlib

    from numba.cuda.simulator.kernel import FakeCUDAKernel

    keys = set()
    for name in ck.numba_cuda_module_names():
        for obj in vars(importlib.import_module(name)).values():
            if isinstance(obj, FakeCUDAKernel) and not obj._device:
                keys.add(f"{obj.fn.__module__}.{obj.fn.__qualname__}")
    return keys


@pytest.mark.cuda
def test_launch_signatures_are_in_the_table(recorded_launches):
    """NUMBA_SIGNATURES holds the argument types the wrappers really launch each kernel with."""
    from minimaskrcnn import backend

    reason = backend.tier_unavailable_reason("cuda")
    if reason is not None:
        pytest.skip(reason)
    for dtype in (np.float32, np.float64):
        _exercise_cuda_ops(dtype)
    assert recorded_launches, "no kernel launch was recorded"
    table = {k: {ck.parse_signature(s) for s in sigs} for k, sigs in ck.NUMBA_SIGNATURES.items()}
    wrong = {k: sorted(map(str, v - table.get(k, set()))) for k, v in recorded_launches.items()
             if v - table.get(k, set())}
    assert not wrong, f"launched with argument types missing from NUMBA_SIGNATURES: {wrong}"
    unlaunched = sorted(_launched_kernels() - set(recorded_launches))
    assert not unlaunched, f"kernels _exercise_cuda_ops never launched (add a call): {unlaunched}"


@pytest.mark.cuda_compile
@compile_check
@pytest.mark.skipif(NVVM_REASON is not None, reason=NVVM_REASON or "")
def test_float64_check_sees_a_silent_promotion():
    """The float32 check above is not vacuous: a float32 compared with an integer, or added to
    ``i + 0.5``, is computed in float64 by Numba, and ``float64_lines`` reports it."""
    from numba import cuda, float32, int64

    def promoted(y, i):
        return y < -1 or y + (i + 0.5) > 3  # int literal, Python float: float64

    def kept(y, i):
        return y < np.float32(-1.0) or y + (np.float32(i) + np.float32(0.5)) > np.float32(3.0)

    bad, _ = cuda.compile_ptx(promoted, (float32, int64), device=True, cc=ck.ARCHS[0])
    good, _ = cuda.compile_ptx(kept, (float32, int64), device=True, cc=ck.ARCHS[0])
    assert any("f64" in line for line in ck.float64_lines(bad))
    assert ck.float64_lines(good) == []
    assert ck.float64_lines("// a comment about .f64\n\tadd.f32 %f1, %f2, %f3;\n") == []
    assert ck.ptx_entry(".visible .entry k(\n.param .u64 a\n)\n{\n\tret;\n}\n", "k").startswith(
        ".entry k(")
