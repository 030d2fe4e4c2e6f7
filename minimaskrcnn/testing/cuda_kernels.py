"""Every CUDA kernel of the package, compiled for real GPUs on a machine without one.

The Numba simulator does no type inference and CuPy sources are compiled only on a GPU, so a
kernel can pass every simulator test and still fail to compile for a device. This module finds
every kernel and compiles it for :data:`ARCHS` (used by ``tests/test_cuda_compile.py``, one test
case per kernel, in the normal CI pass):

- **Numba CUDA**: every ``@cuda.jit`` kernel and device function bound at module level in a
  module that imports ``numba.cuda`` (found by walking the package's files, not by a list), is
  compiled with ``numba.cuda.compile_ptx(py_func, signature, cc=...)`` for each of its
  signatures in :data:`NUMBA_SIGNATURES`. That runs Numba's full type inference and NVVM; it
  needs libNVVM (the ``nvidia-nvvm`` wheel), no GPU.
- **CuPy**: every module-level ``RAW_MODULE`` (or ``*_RAW_MODULE``) dict, the keyword arguments
  a module passes to ``cupy.RawModule(**RAW_MODULE)``, is read from the source with :mod:`ast`
  (cupy is never imported) and compiled with NVRTC through ``cuda.bindings.nvrtc`` with its
  options and every name expression. It needs libNVRTC (the ``nvidia-cuda-nvrtc`` wheel).

Adding a kernel: give it an entry in :data:`NUMBA_SIGNATURES` (the argument types it is launched
with, float32 and float64) or declare its CuPy source in a ``RAW_MODULE``; the tests fail, naming
it, until then. docs/kernels.md has the details.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import functools
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import minimaskrcnn

ARCHS: tuple[tuple[int, int], ...] = ((8, 0), (9, 0))
"""Compute capabilities compiled for: Ampere (A100) and Hopper (H100/H200)."""

PACKAGE_DIR = Path(minimaskrcnn.__file__).resolve().parent

FLOATS = ("float32", "float64")


def each_float(args: str) -> tuple[str, ...]:
    """One signature per float dtype: ``{T}`` in ``args`` becomes float32, then float64."""
    return tuple(args.format(T=t) for t in FLOATS)


# Array types as Numba spells them: C-contiguous arrays of 1 to 4 dimensions.
A1, A2, A3, A4 = "{T}[::1]", "{T}[:, ::1]", "{T}[:, :, ::1]", "{T}[:, :, :, ::1]"
I1, I2, I4 = "int64[::1]", "int64[:, ::1]", "int64[:, :, :, ::1]"
_ROI_FLAGS = "int64, int64, int64, boolean, boolean, boolean"  # pooled_h, pooled_w, ratio, flags

NUMBA_SIGNATURES: dict[str, tuple[str, ...]] = {
    # Argument types (comma-separated Numba types) each kernel / device function is launched or
    # called with; ``{T}`` is the float dtype. Keys: module and name of the Python function.
    # ops/boxes/numba_cuda.py
    "minimaskrcnn.ops.boxes.numba_cuda._box_area_kernel": each_float(f"{A2}, {A1}"),
    "minimaskrcnn.ops.boxes.numba_cuda._box_iou_kernel": each_float(f"{A2}, {A2}, {{T}}, {A2}"),
    "minimaskrcnn.ops.boxes.numba_cuda._clip_kernel": each_float(
        f"{A2}, {{T}}, {{T}}, {{T}}, {A2}"),
    "minimaskrcnn.ops.boxes.numba_cuda._small_mask_kernel": each_float(
        f"{A2}, {{T}}, uint8[::1]"),
    # ops/nms/numba_cuda.py
    "minimaskrcnn.ops.nms.numba_cuda._nms_mask_kernel": each_float(
        f"{A2}, {A1}, {{T}}, {{T}}, uint64[:, ::1]"),
    # ops/_roi_common.py helpers, compiled as device functions once, in ops/_cuda_common.py
    "minimaskrcnn.ops._roi_common.sampling_axis": each_float("{T}, {T}, int64, int64, boolean"),
    "minimaskrcnn.ops._roi_common.sample_point": each_float("{T}, {T}, int64, int64, int64"),
    "minimaskrcnn.ops._roi_common.interp_axis": each_float("{T}, int64"),
    "minimaskrcnn.ops._roi_common.quantized_span": each_float("{T}, {T}"),
    "minimaskrcnn.ops._roi_common.pool_bin": each_float("int64, {T}, int64, int64"),
    # ops/_cuda_common.py: one bilinear sample's gather (RoIAlign forward, mask targets on
    # float and uint8 masks) and its gradient's atomic scatter (count is a float32 sample count)
    "minimaskrcnn.ops._cuda_common.bilinear_interpolate": (
        each_float(f"{A2}, int64, int64, {{T}}, {{T}}, int64, int64, {{T}}, {{T}}")
        + each_float("uint8[:, ::1], int64, int64, {T}, {T}, int64, int64, {T}, {T}")),
    "minimaskrcnn.ops._cuda_common.bilinear_accumulate": each_float(
        f"{A2}, int64, int64, {{T}}, {{T}}, int64, int64, {{T}}, {{T}}, {{T}}, float32"),
    # ops/roi_align/numba_cuda.py (RoIAlign and RoIWarp)
    "minimaskrcnn.ops.roi_align.numba_cuda._geometry": each_float(
        f"{A2}, int64, {{T}}, int64, int64, int64, boolean, boolean"),
    "minimaskrcnn.ops.roi_align.numba_cuda._axis_weight": each_float("int64, {T}, int64"),
    "minimaskrcnn.ops.roi_align.numba_cuda._forward_kernel": each_float(
        f"{A4}, {A2}, {{T}}, {_ROI_FLAGS}, {A4}, {I4}"),
    "minimaskrcnn.ops.roi_align.numba_cuda._backward_atomic_kernel": each_float(
        f"{A4}, {A2}, {I4}, {{T}}, {_ROI_FLAGS}, {A4}"),
    "minimaskrcnn.ops.roi_align.numba_cuda._backward_gather_kernel": each_float(
        f"{A4}, {A2}, {I4}, {I1}, {I1}, {{T}}, {_ROI_FLAGS}, {A4}"),
    # ops/roi_pool/numba_cuda.py
    "minimaskrcnn.ops.roi_pool.numba_cuda._pool_geometry": each_float(
        f"{A2}, int64, {{T}}, int64, int64"),
    "minimaskrcnn.ops.roi_pool.numba_cuda._forward_kernel": each_float(
        f"{A4}, {A2}, {{T}}, int64, int64, {A4}, {I4}"),
    "minimaskrcnn.ops.roi_pool.numba_cuda._backward_atomic_kernel": each_float(
        f"{A4}, {A2}, {I4}, {A4}"),
    "minimaskrcnn.ops.roi_pool.numba_cuda._backward_gather_kernel": each_float(
        f"{A4}, {A2}, {I4}, {I1}, {I1}, {{T}}, {A4}"),
    # ops/mask_ops/numba_cuda.py (0/1 masks stay uint8; other masks come in the boxes' dtype)
    "minimaskrcnn.ops.mask_ops.reference.linear_source": each_float("int64, {T}, int64"),
    "minimaskrcnn.ops.mask_ops.numba_cuda._project_kernel": (
        each_float(f"uint8[:, :, ::1], {A2}, {I1}, int64, {A3}")
        + each_float(f"{A3}, {A2}, {I1}, int64, {A3}")),
    "minimaskrcnn.ops.mask_ops.numba_cuda._loss_kernel": each_float(
        f"{A4}, {I1}, {A3}, boolean, float64[::1], {A4}"),
    "minimaskrcnn.ops.mask_ops.numba_cuda.padded_value": each_float(
        f"{A3}, int64, int64, int64, int64"),
    "minimaskrcnn.ops.mask_ops.numba_cuda._paste_kernel": each_float(
        f"{A3}, {I2}, int64, {A3}"),
    # ops/keypoints/numba_cuda.py
    "minimaskrcnn.ops.keypoints.reference.cubic_source": each_float("int64, {T}, int64"),
    "minimaskrcnn.ops.keypoints.numba_cuda._to_heatmap_kernel": each_float(
        f"{A3}, {A2}, int64, {I2}, uint8[:, ::1]"),
    "minimaskrcnn.ops.keypoints.numba_cuda._loss_kernel": each_float(
        f"{A2}, {I1}, uint8[::1], {A1}, {A2}, float64[::1]"),
    "minimaskrcnn.ops.keypoints.numba_cuda._row_value": each_float(
        f"{A4}, int64, int64, int64, int64, int64, int64, int64, {{T}}, {{T}}, {{T}}, {{T}}"),
    "minimaskrcnn.ops.keypoints.numba_cuda._decode_kernel": each_float(
        f"{A4}, {A2}, {A3}, {A2}"),
}


# --------------------------------------------------------------------------------------------
# Finding the modules (from the files, so nothing has to be registered)
# --------------------------------------------------------------------------------------------


def package_files() -> list[Path]:
    """Every ``.py`` file of the package, sorted (``testing/`` included: it holds no kernels)."""
    return sorted(p for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    rel = path.resolve().relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def module_path(name: str) -> Path:
    base = PACKAGE_DIR.parent.joinpath(*name.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _imports_numba_cuda(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "numba" and any(
                a.name == "cuda" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("numba.cuda"):
            return True
        if isinstance(node, ast.Import) and any(a.name.startswith("numba.cuda") for a in node.names):
            return True
    return False


def _imports_cupy_at_top(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "cupy" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "cupy":
            return True
    return False


@functools.cache
def numba_cuda_module_names() -> tuple[str, ...]:
    """Modules that import ``numba.cuda`` (the places a CUDA kernel can be defined).

    Raises:
        RuntimeError: such a module also imports cupy at module level (it could not be imported
            without cupy, so its kernels could not be compiled here).
    """
    names = []
    for path in package_files():
        tree = ast.parse(path.read_text(), str(path))
        if _imports_numba_cuda(tree):
            if _imports_cupy_at_top(tree):
                raise RuntimeError(f"{path} imports both numba.cuda and cupy at module level: "
                                   "import cupy inside the functions that need it")
            names.append(module_name(path))
    return tuple(names)


def numba_cuda_dispatchers() -> dict[str, object]:
    """``{"module.function": dispatcher}`` for every CUDA kernel and device function.

    Imports each module of :func:`numba_cuda_module_names` (this compiles nothing) and keeps the
    module-level ``CUDADispatcher`` objects (also those inside module-level dicts, such as
    ``jit_helpers``' result), one per Python function: the helpers of ``_roi_common`` that
    several tiers compile appear once, under the module that defines them. Kernels defined
    inside functions are not found: define kernels at module level. Not usable under
    ``NUMBA_ENABLE_CUDASIM=1`` (the simulator has no dispatchers): returns ``{}`` there.
    """
    found: dict[str, object] = {}
    for obj in _all_dispatchers():
        f = obj.py_func
        found.setdefault(f"{f.__module__}.{f.__qualname__}", obj)
    return dict(sorted(found.items()))


@functools.cache
def _all_dispatchers() -> tuple:
    """Every module-level ``CUDADispatcher`` object (duplicates of one function included)."""
    try:
        from numba.cuda.dispatcher import CUDADispatcher  # noqa: PLC0415  (Numba's CUDA target: slow, optional)
    except ImportError:  # the simulator has no dispatchers
        return []
    found = []
    for name in numba_cuda_module_names():
        module = importlib.import_module(name)
        values = list(vars(module).values())
        values += [v for d in list(values) if isinstance(d, dict) for v in d.values()]
        found += [v for v in values if isinstance(v, CUDADispatcher)
                  and all(v is not f for f in found)]
    return tuple(found)


def is_device_function(dispatcher) -> bool:
    return bool(dispatcher.targetoptions.get("device"))


# --------------------------------------------------------------------------------------------
# Compilers (and whether they are here)
# --------------------------------------------------------------------------------------------


def nvvm_unavailable_reason() -> str | None:
    """``None`` when Numba can find libNVVM, else why not (and what to install)."""
    try:
        from numba.cuda.cudadrv import nvvm  # noqa: PLC0415  (libNVVM probe: the cuda-compile extra)

        if nvvm.is_available():
            return None
        detail = "nvvm.is_available() is False"
    except Exception as e:  # noqa: BLE001 (any failure to load means: not available)
        detail = f"{type(e).__name__}: {e}"
    return (f"libNVVM not found ({detail}); install the cuda-compile extra "
            "(pip install -e '.[cuda-compile]')")


def nvrtc_unavailable_reason() -> str | None:
    """``None`` when ``cuda.bindings.nvrtc`` can load libNVRTC, else why not."""
    try:
        from cuda.bindings import nvrtc  # noqa: PLC0415  (NVRTC: the cuda-compile extra, optional)

        result, *_ = nvrtc.nvrtcVersion()
        if result == nvrtc.nvrtcResult.NVRTC_SUCCESS:
            return None
        detail = str(result)
    except Exception as e:  # noqa: BLE001
        detail = f"{type(e).__name__}: {e}"
    return (f"libNVRTC not found ({detail}); install the cuda-compile extra "
            "(pip install -e '.[cuda-compile]')")


def parse_signature(args: str) -> tuple:
    """``"float32[:, ::1], int64"`` -> a tuple of Numba types."""
    from numba.core import types  # noqa: PLC0415  (Numba's type system, loaded with the compiler)

    sig = eval(f"({args},)", {"__builtins__": {}}, vars(types))  # noqa: S307 (our own table)
    return tuple(sig)


class _FakeDevice:
    def __init__(self, cc):
        self.compute_capability = cc


@contextlib.contextmanager
def _device_functions_for(cc: tuple[int, int]):
    """Let ``compile_ptx`` type calls to ``@cuda.jit(device=True)`` dispatchers without a GPU.

    When a kernel calls a device-function dispatcher, numba-cuda compiles the callee with
    ``get_current_device().compute_capability`` (``CUDADispatcher.compile_device``), which needs
    a driver even inside ``compile_ptx``. Inside this context that lookup answers ``cc``; the
    overloads the callees gain are removed on exit, so a later real launch in the same process
    compiles them afresh for its own device. They are kept aside for ``cc`` and put back the
    next time this context opens for ``cc``: a device function called by several kernels is
    compiled once per capability and argument types, not once per kernel (a fifth of
    ``tests/test_cuda_compile.py``'s time).
    """
    from numba.cuda import dispatcher as dispatcher_module  # noqa: PLC0415  (Numba's CUDA target: slow, optional)

    callees = [d for d in _all_dispatchers() if is_device_function(d)]
    saved = [(d, dict(d.overloads)) for d in callees]
    kept = _CALLEE_OVERLOADS.setdefault(cc, {})
    for d, overloads in saved:
        d.overloads.update({**kept.get(d, {}), **overloads})
    original = dispatcher_module.get_current_device
    dispatcher_module.get_current_device = lambda: _FakeDevice(cc)
    try:
        yield
    finally:
        dispatcher_module.get_current_device = original
        for d, overloads in saved:
            kept[d] = {k: v for k, v in d.overloads.items() if k not in overloads}
            d.overloads.clear()
            d.overloads.update(overloads)


_CALLEE_OVERLOADS: dict[tuple[int, int], dict] = {}
"""``{cc: {device-function dispatcher: {argument types: overload compiled for cc}}}``, what
:func:`_device_functions_for` compiled, kept between its uses."""


def compile_numba(dispatcher, signatures, archs=ARCHS) -> dict[tuple[str, tuple[int, int]], str]:
    """PTX of ``dispatcher``'s Python function for every signature and compute capability.

    One compute capability at a time, so that the device functions a kernel calls (compiled once
    per argument types and cached by their dispatchers) are compiled for that capability.

    Returns:
        ``{(signature, cc): ptx}``.
    """
    from numba import cuda  # noqa: PLC0415  (Numba's CUDA target: slow, optional)

    out = {}
    for cc in archs:
        with _device_functions_for(cc):
            for sig in signatures:
                out[sig, cc], _ = cuda.compile_ptx(
                    dispatcher.py_func, parse_signature(sig), cc=cc,
                    device=is_device_function(dispatcher))
    return out


_F64 = re.compile(r"^\s*[^/\s].*\.f64\b.*$", re.M)


def float64_lines(ptx: str) -> list[str]:
    """The PTX lines that declare, convert to or compute in float64 (``.f64``), comments aside.

    A float32 kernel should have none: on most GPUs float64 runs at 1/2 (H100) to 1/64 (consumer
    cards) of the float32 rate, and Numba / C++ silently promote a float32 value compared with or
    added to an integer or a Python float (``y < -1``, ``i + 0.5``) to float64.
    """
    return [line.strip() for line in _F64.findall(ptx)]


def ptx_entry(ptx: str, name: str) -> str:
    """The text of kernel ``name``'s ``.entry`` block in ``ptx`` (``""`` if absent)."""
    m = re.search(rf"\.entry\s+{re.escape(name)}\s*\(.*?\n}}\n", ptx, re.S)
    return m.group(0) if m else ""


class NvrtcError(RuntimeError):
    """NVRTC rejected a source; the message holds the compiler log."""


def _check(result, what: str):
    from cuda.bindings import nvrtc  # noqa: PLC0415  (NVRTC: the cuda-compile extra, optional)

    err, *rest = result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise NvrtcError(f"{what}: {err}")
    return rest[0] if len(rest) == 1 else rest


def compile_nvrtc(code: str, options, name_expressions, cc: tuple[int, int],
                  filename: str = "kernel.cu") -> tuple[str, str, dict[str, str]]:
    """Compile a CUDA C++ source to PTX as ``cupy.RawModule`` would, with NVRTC.

    Returns:
        ``(ptx, log, lowered)``: ``lowered`` maps each name expression to its mangled name.

    Raises:
        NvrtcError: compilation failed (the message holds NVRTC's log).
    """
    from cuda.bindings import nvrtc  # noqa: PLC0415  (NVRTC: the cuda-compile extra, optional)

    prog = _check(nvrtc.nvrtcCreateProgram(code.encode(), filename.encode(), 0, [], []),
                  "nvrtcCreateProgram")
    try:
        for name in name_expressions:
            _check(nvrtc.nvrtcAddNameExpression(prog, name.encode()), f"name expression {name}")
        opts = [o.encode() for o in options] + [f"--gpu-architecture=compute_{cc[0]}{cc[1]}".encode()]
        (result,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        size = _check(nvrtc.nvrtcGetProgramLogSize(prog), "log size")
        log_buf = b" " * size
        _check(nvrtc.nvrtcGetProgramLog(prog, log_buf), "log")
        log = log_buf.decode(errors="replace").rstrip("\x00").strip()
        if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise NvrtcError(f"{filename} for compute_{cc[0]}{cc[1]} ({' '.join(options)}): "
                             f"{result}\n{log}")
        lowered = {n: _check(nvrtc.nvrtcGetLoweredName(prog, n.encode()), n).decode()
                   for n in name_expressions}
        size = _check(nvrtc.nvrtcGetPTXSize(prog), "PTX size")
        ptx_buf = b" " * size
        _check(nvrtc.nvrtcGetPTX(prog, ptx_buf), "PTX")
        return ptx_buf.decode().rstrip("\x00"), log, lowered
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


# --------------------------------------------------------------------------------------------
# CuPy sources, read with ast (cupy is never imported)
# --------------------------------------------------------------------------------------------

_SAFE_BUILTINS = {n: getattr(builtins, n) for n in
                  ("tuple", "list", "dict", "str", "int", "len", "range", "sorted", "zip")}
_ALLOWED_MODULES = {"numpy"}  # the only imports a RAW_MODULE's expression may use (np.dtype)


class _ConstantReader:
    """Evaluates module-level constant expressions of the package's files, following imports."""

    def __init__(self):
        self._trees: dict[str, ast.Module] = {}
        self._values: dict[tuple[str, str], object] = {}

    def tree(self, module: str) -> ast.Module:
        if module not in self._trees:
            path = module_path(module)
            self._trees[module] = ast.parse(path.read_text(), str(path))
        return self._trees[module]

    def _binding(self, module: str, name: str):
        """The last module-level statement binding ``name`` (an assignment or an import)."""
        found = None
        for node in self.tree(module).body:
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == name for t in node.targets):
                found = node
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                    and node.target.id == name and node.value is not None:
                found = node
            elif isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                    (a.asname or a.name.split(".")[0]) == name for a in node.names):
                found = node
        return found

    def value(self, module: str, name: str):
        key = (module, name)
        if key in self._values:
            return self._values[key]
        node = self._binding(module, name)
        if node is None:
            if name in _SAFE_BUILTINS:
                return _SAFE_BUILTINS[name]
            raise LookupError(f"{module}: no module-level constant {name!r}")
        if isinstance(node, ast.Import):
            alias = next(a for a in node.names if (a.asname or a.name.split(".")[0]) == name)
            if alias.name not in _ALLOWED_MODULES:
                raise LookupError(f"{module}: {name!r} is the module {alias.name}, not a constant")
            value = importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom):
            alias = next(a for a in node.names if (a.asname or a.name) == name)
            source = node.module or ""
            if node.level:
                pkg = module.split(".")
                if module_path(module).name != "__init__.py":
                    pkg = pkg[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                source = ".".join(pkg + ([source] if source else []))
            if not source.startswith("minimaskrcnn"):
                raise LookupError(f"{module}: {name!r} comes from {source}, outside the package")
            value = self.value(source, alias.name)
        else:
            value = self.evaluate(module, node.value)
        self._values[key] = value
        return value

    def evaluate(self, module: str, expr: ast.expr):
        """Evaluate ``expr`` with every free name resolved as a module-level constant."""
        names = {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)}
        bound = {t.id for c in ast.walk(expr) if isinstance(c, ast.comprehension)
                 for t in ast.walk(c.target) if isinstance(t, ast.Name)}
        env = {"__builtins__": _SAFE_BUILTINS}
        env.update({n: self.value(module, n) for n in sorted(names - bound)})
        return eval(compile(ast.Expression(expr), module, "eval"), env)  # noqa: S307 (own code)


@dataclass(frozen=True)
class RawSource:
    """One ``RAW_MODULE`` of a module: what ``cupy.RawModule(**RAW_MODULE)`` compiles."""

    module: str
    constant: str
    code: str
    options: tuple[str, ...]
    name_expressions: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.module}.{self.constant}"


_RAW_NAME = re.compile(r"^(\w+_)?RAW_MODULE$")
_GLOBAL = re.compile(r"(template\s*<[^<>]*>\s*)?(?:extern\s+\"C\"\s+)?__global__\s+void\s+(\w+)")
_CUPY_COMPILERS = ("RawModule", "RawKernel", "ElementwiseKernel", "ReductionKernel")


def global_kernels(code: str) -> dict[str, bool]:
    """``{kernel name: is a template}`` for every ``__global__`` function in ``code``."""
    return {m.group(2): bool(m.group(1)) for m in _GLOBAL.finditer(code)}


def cupy_sources() -> tuple[list[RawSource], list[str]]:
    """Every ``RAW_MODULE`` in the package, and the problems that would let a kernel skip the check.

    Problems: a ``cupy.RawModule`` / ``RawKernel`` call not of the form ``(**RAW_MODULE)``, an
    ``ElementwiseKernel`` / ``ReductionKernel`` (not compiled by this check), a ``__global__``
    kernel in a module's strings that no ``RAW_MODULE`` of that module compiles, a templated
    kernel without a ``<float>`` and a ``<double>`` name expression, a name expression naming no
    kernel of its source.
    """
    reader = _ConstantReader()
    sources: list[RawSource] = []
    problems: list[str] = []
    for path in package_files():
        text = path.read_text()
        if "__global__" not in text and not any(c in text for c in _CUPY_COMPILERS):
            continue
        module = module_name(path)
        tree = reader.tree(module)
        raw_names = [t.id for node in tree.body if isinstance(node, ast.Assign)
                     for t in node.targets if isinstance(t, ast.Name) and _RAW_NAME.match(t.id)]
        mine = []
        for constant in raw_names:
            spec = reader.value(module, constant)
            if not isinstance(spec, dict) or "code" not in spec:
                problems.append(f"{module}.{constant} must be a dict with 'code', 'options' and "
                                "'name_expressions' (the arguments of cupy.RawModule)")
                continue
            names = tuple(spec.get("name_expressions", ()))
            if "name" in spec:  # RawKernel(code, name, options)
                names = ()
            src = RawSource(module, constant, spec["code"], tuple(spec.get("options", ())), names)
            mine.append(src)
            kernels = global_kernels(src.code)
            for n in names:
                base = n.split("<", 1)[0].strip()
                if base not in kernels:
                    problems.append(f"{src.key}: name expression {n!r} names no __global__ kernel")
            for k, templated in kernels.items():
                if templated:
                    for t in ("float", "double"):
                        if f"{k}<{t}>" not in names:
                            problems.append(f"{src.key}: templated kernel {k} has no "
                                            f"{k}<{t}> name expression (it would never compile)")
        sources += mine
        # kernels in any string of the file must be compiled by one of its RAW_MODULEs
        covered = set().union(*(global_kernels(s.code) for s in mine)) if mine else set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for k in global_kernels(node.value):
                    if k not in covered:
                        problems.append(f"{module}: __global__ {k} is in no RAW_MODULE "
                                        "(declare RAW_MODULE = dict(code=..., options=..., "
                                        "name_expressions=...) and pass it to cupy.RawModule)")
            if isinstance(node, ast.Call):
                fn = node.func
                fname = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
                if fname in ("ElementwiseKernel", "ReductionKernel"):
                    problems.append(f"{module} line {node.lineno}: cupy.{fname} is not compiled by "
                                    "the CI check; write it as a RawModule with a RAW_MODULE")
                elif fname in ("RawModule", "RawKernel"):
                    ok = (not node.args and len(node.keywords) == 1 and node.keywords[0].arg is None
                          and isinstance(node.keywords[0].value, ast.Name)
                          and node.keywords[0].value.id in raw_names)
                    if not ok:
                        problems.append(f"{module} line {node.lineno}: call cupy.{fname}(**RAW_MODULE) "
                                        "with a module-level RAW_MODULE constant")
    return sources, sorted(set(problems))
