"""Do the ranks agree? Exact digests of parameter lists and the collective checks built on them
(every rank reaches the same verdict, so none is left waiting); and, before any work, whether
every rank was started with the same options on the same data (:func:`first_disagreement`,
:func:`file_fingerprint`).

The parameter arguments take ``model`` (anything with ``named_parameters()``),
``model.named_parameters()`` (``(name, Param)`` pairs), a ``{name: Param}`` dict, or a list of
Params (named by position); a :class:`~minimaskrcnn.nn.Param` is anything with ``.data`` and
``.grad``.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from minimaskrcnn.backend import to_numpy
from minimaskrcnn.distributed.comm import Comm, resolve


class ParameterMismatchError(RuntimeError):
    """The ranks' parameters (or their names, shapes, dtypes) differ."""


def named_params(params) -> list[tuple[str, object]]:
    """``[(name, Param)]`` from a module, a ``{name: Param}`` dict, (name, Param) pairs or
    Params (named by position).

    Raises:
        TypeError: an item has no ``.data`` and ``.grad`` (not a Param).
    """
    if hasattr(params, "named_parameters"):
        params = params.named_parameters()
    elif isinstance(params, dict):
        params = params.items()
    out = []
    for i, item in enumerate(params):
        name, p = item if isinstance(item, tuple) else (str(i), item)
        if not hasattr(p, "data") or not hasattr(p, "grad"):
            raise TypeError(f"parameter {name} is a {type(p).__name__}, not a Param "
                            "(an object with .data and .grad)")
        out.append((str(name), p))
    return out


def _layout(named) -> list[tuple[str, tuple[int, ...], str]]:
    return [(name, tuple(p.data.shape), np.dtype(p.data.dtype).str) for name, p in named]


def check_same_layout(named, comm: Comm, what: str) -> None:
    """Raise the same :class:`ParameterMismatchError` on every rank if the ranks' parameter
    lists (names, shapes, dtypes, in order) differ; nothing is raised on some ranks only (no
    hang). Collective (one small pickled allgather).

    Args:
        named: ``[(name, Param)]`` (:func:`named_params`).
        comm: the communicator.
        what: the caller's name, for the message.
    """
    layouts = comm.allgather(_layout(named))
    ref = layouts[0]
    for r, lay in enumerate(layouts[1:], start=1):
        if lay == ref:
            continue
        for k, (a, b) in enumerate(zip(ref, lay, strict=False)):
            if a != b:
                raise ParameterMismatchError(
                    f"{what}: parameter {k} is {a[0]} {a[1]} {a[2]} on rank 0 but {b[0]} "
                    f"{b[1]} {b[2]} on rank {r}: the ranks did not build the same model")
        raise ParameterMismatchError(
            f"{what}: rank 0 has {len(ref)} parameters, rank {r} has {len(lay)}: the ranks did "
            "not build the same model")


def _digest(name: str, a) -> str:
    a = np.ascontiguousarray(to_numpy(a))
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{name}|{a.shape}|{a.dtype.str}|".encode())
    h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
    return h.hexdigest()


def parameter_digests(params) -> list[tuple[str, str]]:
    """``[(name, hex digest)]``: a 128-bit BLAKE2b of each parameter's name, shape, dtype and
    exact bytes (``p.data``; NaN payloads and -0.0 count as different values). Local."""
    return [(name, _digest(name, p.data)) for name, p in named_params(params)]


def parameter_checksum(params) -> str:
    """One hex digest (BLAKE2b, 128 bits) of all parameters' names, shapes, dtypes and exact
    bytes, in order: equal on two ranks iff (up to hash collisions) their parameters are
    bit-identical. Local: no communication."""
    h = hashlib.blake2b(digest_size=16)
    for name, d in parameter_digests(params):
        h.update(f"{name}={d};".encode())
    return h.hexdigest()


def check_parameters_equal(params, comm: Comm | None = None) -> str:
    """Check that every rank holds bit-identical parameters; returns the checksum.

    Collective (one small pickled allgather of per-parameter digests); every rank reaches the
    same verdict, so on a mismatch every rank raises the same error (no rank is left waiting).

    Raises:
        ParameterMismatchError: names the first differing parameter (in
            ``named_parameters()`` order), the ranks that differ from rank 0 and how many
            parameters differ in all.
    """
    comm = resolve(comm)
    digests = parameter_digests(params)
    if not comm.is_distributed:
        return parameter_checksum(params)
    everyone = comm.allgather(digests)
    ref = everyone[0]
    bad_ranks = [r for r, d in enumerate(everyone) if d != ref]
    if bad_ranks:
        for r in bad_ranks:
            if [n for n, _ in everyone[r]] != [n for n, _ in ref]:
                raise ParameterMismatchError(
                    f"parameters differ across ranks: rank {r} has a different parameter list "
                    f"({len(everyone[r])} parameters) than rank 0 ({len(ref)})")
        differing = [k for k in range(len(ref)) if any(everyone[r][k] != ref[k]
                                                         for r in bad_ranks)]
        k = differing[0]
        ranks_k = [r for r in bad_ranks if everyone[r][k] != ref[k]]
        raise ParameterMismatchError(
            f"parameters differ across ranks: first differing parameter {ref[k][0]!r} (rank(s) "
            f"{', '.join(map(str, ranks_k))} differ from rank 0); {len(differing)} of {len(ref)} "
            "parameters differ. Broadcast the parameters from rank 0 at start "
            "(broadcast_parameters) and apply the same update on every rank")
    return parameter_checksum(params)


def file_fingerprint(path: str) -> str:
    """``"<size> bytes, sha256 <hex>"`` of a file, ``"a folder of <n> entries, sha256 <hex>"``
    of a folder's (name, size) list (not its contents: cheap for 30k images), or ``"missing"``:
    what two ranks compare to know they read the same data (each may read its own copy)."""
    if os.path.isfile(path):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return f"{os.path.getsize(path)} bytes, sha256 {h.hexdigest()[:16]}"
    if os.path.isdir(path):
        h = hashlib.sha256()
        names = sorted(os.listdir(path))
        for name in names:
            full = os.path.join(path, name)
            h.update(f"{name}\0{os.path.getsize(full) if os.path.isfile(full) else -1}\n"
                     .encode("utf-8", "surrogateescape"))
        return f"a folder of {len(names)} entries, sha256 {h.hexdigest()[:16]}"
    return "missing"


def first_disagreement(mine: dict, comm: Comm | None = None) -> str | None:
    """Compare every rank's ``{what: value}`` with rank 0's (one allgather; call it on every
    rank before any work). Returns the same line on every rank naming the first entry and the
    first rank that differ (``"the ranks disagree: --iters is 3 on rank 1 but 2 on rank 0;
    ..."``; values cut at 200 characters), or None when all agree."""
    everyone = resolve(comm).allgather(mine)
    first = everyone[0]
    for rank, theirs in enumerate(everyone[1:], 1):
        for key in list(first) + [k for k in theirs if k not in first]:
            if first.get(key) != theirs.get(key):
                return (f"the ranks disagree: {key} is {theirs.get(key)!r:.200} on rank {rank} but "
                        f"{first.get(key)!r:.200} on rank 0; every rank must run the same command "
                        "on the same data")
    return None
