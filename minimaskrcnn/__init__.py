"""minimaskrcnn: Mask R-CNN (He et al., ICCV 2017) from scratch in NumPy, with Numba CPU, Numba
CUDA and CuPy kernels checked against the reference, and hand-written backward passes.

Public API:
    minimaskrcnn.ops        detection ops (box_iou, nms, roi_align, ...), torchvision-compatible
    minimaskrcnn.backend    the dispatch point for kernel tiers
    minimaskrcnn.build_model(preset_or_config, rng)   an untrained Mask R-CNN (minimaskrcnn.model)
    minimaskrcnn.load_model(name_or_path, device="cpu")
                            a trained one: shipped weights by name ("nuclei-mini-dsb2018") or a
                            checkpoint of ``minimaskrcnn train`` (minimaskrcnn.model_zoo)
"""

import os

__version__ = "0.1.0"

# Numba's parallel kernels (RoIAlign, paste, ...) run on OpenMP threads, which by default spin
# for a while after each kernel. The host threads that follow them (predict's RoI heads, the
# layers' blocks, backend.map_chunks) then share their cores with spinning threads: the box
# head right after its RoIAlign took 0.018-0.022 s instead of 0.012-0.014 (docs/performance.md).
# Passive threads sleep at once. Set before Numba loads its OpenMP runtime; a value the user
# set is kept (benchmarks/timing.py's torch_env gives other frameworks' processes the default).
OMP_WAIT_POLICY_SET = "OMP_WAIT_POLICY" not in os.environ
if OMP_WAIT_POLICY_SET:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

__all__ = ["__version__", "build_model", "load_model"]


def __getattr__(name: str):
    # build_model and load_model are imported on first use: importing the package (which every
    # `import minimaskrcnn.backend` does) must not import the model (0.4 s of imports)
    if name == "build_model":
        from minimaskrcnn.model import build_model  # noqa: PLC0415  (heavy: the model, on first use)

        return build_model
    if name == "load_model":
        from minimaskrcnn.model_zoo import load_model  # noqa: PLC0415  (heavy: the model, on first use)

        return load_model
    raise AttributeError(f"module 'minimaskrcnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
