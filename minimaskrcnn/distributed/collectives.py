"""Splitting the work over the ranks and putting the results together: shards, batch shares,
the fused gradient allreduce, sums of small values, gathering on rank 0, the parameter
broadcast.

The scheme (ChainerMN and Horovod work this way)
------------------------------------------------
``mpiexec -n W minimaskrcnn train ...`` starts W processes (*ranks*), on one machine or several.
Every rank holds the whole model. For every global batch of ``B`` images (``B % W == 0``):

1. rank ``r`` runs forward and backward on its own share of the batch: the positions
   :func:`balance_batch` deals it by the crops' instances (the training loop), so that the
   ranks' passes take about as long; :func:`split_batch` is the plain rule, contiguous blocks
   ``r*B/W .. (r+1)*B/W - 1`` (a rank may hold more or fewer than ``B/W`` images under the first:
   step 2 makes any split exact);
2. the loss normalisers that torchvision takes over the *whole* batch (sampled anchors, sampled
   RoIs, foreground RoIs for the mask loss) are each rank's counts summed with
   :func:`allreduce_sum` *before* dividing, so a rank's loss is its share of the one-process loss
   (its terms divided by the global counts), not a per-rank mean;
3. :func:`allreduce_gradients` sums the gradients of all ranks in one fused ``MPI_Allreduce``
   (one flat buffer, not one call per parameter; :func:`bind_gradient_buffer` makes the
   gradients views of that buffer, so no copy is needed). The sum of the shares' gradients is the
   gradient of the one-process loss, so there is **no division by W**;
4. every rank applies the same SGD step to the same parameters, so the ranks stay equal (checked
   with :func:`~minimaskrcnn.distributed.check_parameters_equal`; :func:`broadcast_parameters`
   makes them equal at start).

If the random streams are per image (image ``i`` of iteration ``t`` draws its crop, flip and
RPN/RoI samples from a stream that depends only on the seed, ``t`` and the image's position, not
on which rank runs it), W ranks see exactly what one process sees, and their parameters equal
one process's up to float summation order (the allreduce adds the shares in another order than
one process accumulates them).

Rank 0 (``comm.is_main``) alone writes logs, checkpoints, figures and metrics. Evaluation
:func:`shard` s the images (contiguous blocks) and :func:`gather_to_main` concatenates the
detections on rank 0 in global order, so pycocotools sees the one-process list.

Arrays
------
Parameters are :class:`~minimaskrcnn.nn.Param` objects (``.data``/``.grad``), given as for
:func:`~minimaskrcnn.distributed.consistency.named_params`. The collectives run on host NumPy
buffers; CuPy parameters are copied through the host (correct, not fast: no CUDA-aware MPI is
assumed). Every function takes an optional ``comm`` (default :func:`get_comm`, the process's).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from minimaskrcnn.backend import get_array_module, to_numpy
from minimaskrcnn.distributed.comm import IN_PLACE, SUM, Comm, check_root, resolve
from minimaskrcnn.distributed.consistency import check_same_layout, named_params

# --------------------------------------------------------------------------------------------
# Splitting work
# --------------------------------------------------------------------------------------------


def shard_range(n: int, rank: int, size: int) -> range:
    """Rank ``rank``'s contiguous share of ``range(n)`` when split over ``size`` ranks.

    The first ``n % size`` ranks get ``n // size + 1`` items, the others ``n // size``; the
    shares, in rank order, concatenate to ``range(n)`` (so gathering in rank order restores
    the global order). Deterministic: depends on ``(n, rank, size)`` only.

    Raises:
        ValueError: ``n < 0``, ``size < 1`` or ``rank`` not in ``[0, size)``.
    """
    n, rank, size = int(n), int(rank), int(size)
    if n < 0:
        raise ValueError(f"shard: the count must be >= 0, got {n}")
    if size < 1:
        raise ValueError(f"shard: size must be >= 1, got {size}")
    if not 0 <= rank < size:
        raise ValueError(f"shard: rank must be in [0, {size}), got {rank}")
    q, extra = divmod(n, size)
    start = rank * q + min(rank, extra)
    return range(start, start + q + (rank < extra))


def shard(sequence_or_count, comm: Comm | None = None):
    """This rank's contiguous share of a sequence (or of ``range(count)``), see
    :func:`shard_range` for the split.

    Args:
        sequence_or_count: an ``int`` n (returns a ``range`` of indices), a list, tuple, range,
            string or NumPy array (returns the slice, same type), or any other object with
            ``len()`` and integer ``[i]`` (a dataset: returns the list of its items).
        comm: defaults to :func:`get_comm`.

    Raises:
        ValueError: a negative count.
        TypeError: the argument has no ``len()``.
    """
    comm = resolve(comm)
    if isinstance(sequence_or_count, (int, np.integer)):
        return shard_range(int(sequence_or_count), comm.rank, comm.size)
    seq = sequence_or_count
    r = shard_range(len(seq), comm.rank, comm.size)
    if isinstance(seq, (list, tuple, range, str, np.ndarray)):
        return seq[r.start:r.stop]
    return [seq[i] for i in r]


def split_batch(global_batch_size: int, comm: Comm | None = None) -> list[int]:
    """This rank's positions in a global batch: ``[k for k in range(B) if r*B/W <= k <
    (r+1)*B/W]`` for rank ``r`` of ``W`` (contiguous blocks of ``B/W`` positions).

    Raises:
        ValueError: ``B < 1``, or ``B % W != 0`` (the message names B and W and the valid
            batch sizes nearest to B).
    """
    comm = resolve(comm)
    b, w = int(global_batch_size), comm.size
    if b < 1:
        raise ValueError(f"the global batch size must be >= 1, got {b}")
    if b % w:
        lower = (b // w) * w
        options = ", ".join(str(x) for x in (lower, lower + w) if x > 0)
        raise ValueError(
            f"the global batch size {b} is not divisible by the number of MPI ranks {w}: every "
            f"rank must run the same number of images (use a batch size of {options}, or "
            f"another number of ranks)")
    per = b // w
    return list(range(comm.rank * per, (comm.rank + 1) * per))


IMAGE_COST_IN_INSTANCES = 25.0
"""The work of one training crop besides its instances, in instances (:func:`balance_batch`):
a nuclei-mini crop costs about 0.117 s one-thread forward + backward whatever it holds
(backbone, FPN, RPN, 256 box-head RoIs) plus about 4.5 ms per foreground RoI (the mask head),
measured on the 2-core machine (docs/performance.md)."""


def assign_by_cost(costs, world: int) -> list[list[int]]:
    """Positions ``0..B-1`` of a batch dealt to ``world`` ranks by cost: longest processing time
    first (Graham 1969), each position in decreasing cost (ties: lower position first) to the
    rank with the least cost so far (ties: fewer images, then lower rank). Deterministic, so
    every rank computes the same assignment; each rank's positions come back sorted. With
    ``B >= world`` every rank gets at least one image, and the costliest rank holds at most
    4/3 of the optimum.

    Raises:
        ValueError: fewer positions than ranks, or a cost that is not a finite number >= 0.
    """
    costs = [float(c) for c in costs]
    if world < 1 or len(costs) < world:
        raise ValueError(f"{len(costs)} images cannot be shared by {world} ranks: every rank "
                         "needs at least one")
    if not all(np.isfinite(c) and c >= 0 for c in costs):
        raise ValueError(f"costs must be finite numbers >= 0, got {costs}")
    loads, shares = [0.0] * world, [[] for _ in range(world)]
    for k in sorted(range(len(costs)), key=lambda k: (-costs[k], k)):
        r = min(range(world), key=lambda r: (loads[r], len(shares[r]), r))
        loads[r] += costs[k]
        shares[r].append(k)
    return [sorted(share) for share in shares]


def balance_batch(instances, comm: Comm | None = None, *,
                  image_cost: float = IMAGE_COST_IN_INSTANCES) -> list[int]:
    """This rank's positions in a batch whose crops hold ``instances`` (B ints, the same list on
    every rank, e.g. :meth:`~minimaskrcnn.data.loader.TrainBatches.instance_counts`): the batch
    dealt by :func:`assign_by_cost` with cost ``image_cost + instances`` per crop, so the ranks
    finish their forward and backward at about the same time (the mask head's work grows with
    the instances). A rank may hold more images than another; the loss normalisers are summed
    over the ranks, so the W ranks still compute the gradient of one process. One process:
    ``[0, ..., B-1]``.

    Raises:
        ValueError: fewer images than ranks, or a negative / non-finite count.
    """
    comm = resolve(comm)
    costs = [image_cost + float(n) for n in instances]
    if comm.size == 1:
        assign_by_cost(costs, 1)  # the same checks
        return list(range(len(costs)))
    return assign_by_cost(costs, comm.size)[comm.rank]


def plan_roi_transfers(rois, images, image_cost: float = IMAGE_COST_IN_INSTANCES) -> list:
    """Which RoIs the ranks pass to each other so that their work evens out: ``[(src, dst, n),
    ...]``, rank ``src`` hands its last ``n`` RoIs to rank ``dst``.

    Rank ``r`` holds ``rois[r]`` RoIs of a head and ``images[r]`` images; its work is counted as
    ``image_cost * images[r] + RoIs`` (the unit of :func:`balance_batch`: one RoI of the mask
    head weighs about one instance). The RoIs are dealt one by one to the rank with the least
    work so far (ties: lower rank), which gives each rank its target; the ranks above target
    then hand their surplus to those below, both taken in rank order. Deterministic: every rank
    computes the same plan from the same allgathered counts. No transfer when the ranks already
    hold their targets.
    """
    world = len(rois)
    work = [image_cost * float(n) for n in images]
    target = [0] * world
    for _ in range(int(sum(rois))):
        r = min(range(world), key=lambda r: (work[r] + target[r], r))
        target[r] += 1
    surplus = [(r, int(rois[r]) - target[r]) for r in range(world) if rois[r] > target[r]]
    deficit = [(r, target[r] - int(rois[r])) for r in range(world) if rois[r] < target[r]]
    transfers, i, j = [], 0, 0
    while i < len(surplus) and j < len(deficit):
        (src, give), (dst, take) = surplus[i], deficit[j]
        n = min(give, take)
        transfers.append((src, dst, n))
        surplus[i], deficit[j] = (src, give - n), (dst, take - n)
        i += surplus[i][1] == 0
        j += deficit[j][1] == 0
    return transfers


class RoIExchange:
    """Evens out one head's RoIs over the data-parallel ranks, inside a training iteration.

    The mask head's work grows with a rank's foreground RoIs, which no split of whole images
    can always balance (the crops of a batch differ in instances). After pooling, each rank
    calls :meth:`scatter` with its RoIs' pooled features and targets: the ranks with more work
    hand their last RoIs to those with less (:func:`plan_roi_transfers`, one ``alltoall``), and
    every rank runs the head, its loss and the head's backward on the RoIs it then holds. The
    loss normaliser is the batch's foreground count summed over the ranks, so the loss terms
    and the parameter gradients (summed by the allreduce) are those of one process up to float
    summation order. :meth:`gather_gradient` returns the gradients of the passed RoIs' pooled
    features to their owners (a second ``alltoall``), which run the pooler's backward into
    their own feature maps.

    Args:
        comm: the communicator; images: this rank's images in the batch (their fixed work).
    """

    def __init__(self, comm: Comm, images: int, image_cost: float = IMAGE_COST_IN_INSTANCES):
        self.comm = comm
        self.images = int(images)
        self.image_cost = float(image_cost)

    def scatter(self, arrays: tuple):
        """``arrays``: this rank's R RoIs as arrays sharing axis 0, on the host or the device
        (the mask head: pooled features ``(R, C, S, S)`` float32, targets ``(R, M, M)`` float32,
        predictor channels ``(R,)`` int64). A collective: every rank calls it, in the same
        iteration. Returns ``(the arrays this rank holds now, plan)``: the first ``keep`` of its
        own RoIs, then those received, by source rank, each array where it was; ``plan`` is for
        :meth:`gather_gradient`."""
        comm, rank = self.comm, self.comm.rank
        n = int(arrays[0].shape[0])
        counts = comm.allgather((n, self.images))
        transfers = plan_roi_transfers([c[0] for c in counts], [c[1] for c in counts],
                                       self.image_cost)
        sent = [(dst, k) for src, dst, k in transfers if src == rank]
        received = [(src, k) for src, dst, k in transfers if dst == rank]
        keep = n - sum(k for _, k in sent)
        plan = (keep, sent, received, bool(transfers))
        if not transfers:  # the same on every rank: no alltoall anywhere
            return arrays, plan
        outgoing, start = [None] * comm.size, keep
        for dst, k in sent:
            outgoing[dst] = tuple(to_numpy(a[start:start + k]) for a in arrays)
            start += k
        incoming = comm.alltoall(outgoing)
        held = []
        for i, a in enumerate(arrays):  # each array stays where it was (device or host)
            xp = get_array_module(a)
            held.append(xp.concatenate([a[:keep]] + [xp.asarray(incoming[src][i])
                                                     for src, _ in received]))
        return tuple(held), plan

    def gather_gradient(self, grad, plan):
        """``grad``: the gradient of :meth:`scatter`'s first array as this rank holds it (the
        pooled features' ``(R_held, C, S, S)``). A collective, like :meth:`scatter`. Returns
        the gradient of this rank's own R RoIs, in their original order."""
        keep, sent, received, any_transfer = plan
        if not any_transfer:
            return grad
        xp = get_array_module(grad)
        outgoing, start = [None] * self.comm.size, keep
        for src, k in received:
            outgoing[src] = to_numpy(grad[start:start + k])
            start += k
        incoming = self.comm.alltoall(outgoing)
        return xp.concatenate([grad[:keep]] + [xp.asarray(incoming[dst]) for dst, _ in sent])


# --------------------------------------------------------------------------------------------
# Fused buffers
# --------------------------------------------------------------------------------------------


def _groups(arrays: list) -> dict[np.dtype, list[int]]:
    """Indices of ``arrays`` grouped by dtype, in first-seen order (one fused buffer each)."""
    groups: dict[np.dtype, list[int]] = {}
    for i, a in enumerate(arrays):
        groups.setdefault(np.dtype(a.dtype), []).append(i)
    return groups


def _flat_buffer(comm: Comm, purpose: str, dtype: np.dtype, n: int) -> np.ndarray:
    """A preallocated contiguous buffer of ``n`` elements kept on ``comm`` and reused."""
    cache = comm.__dict__.setdefault("_flat_buffers", {})
    key = (purpose, dtype.str, n)
    buf = cache.get(key)
    if buf is None:
        buf = cache[key] = np.empty(n, dtype=dtype)
    return buf


def _is_view_at(a, buf: np.ndarray, offset: int) -> bool:
    """``a`` is the C-contiguous view of ``buf`` starting at element ``offset``."""
    return (isinstance(a, np.ndarray) and a.base is buf and a.flags.c_contiguous
            and a.__array_interface__["data"][0] == buf.ctypes.data + offset * buf.itemsize)


def _fused(comm: Comm, purpose: str, arrays: list, op) -> None:
    """Copy ``arrays`` into one flat buffer per dtype, apply ``op(buf)`` in place, copy back.
    Arrays that already are views of the buffer at their offsets (:func:`bind_gradient_buffer`)
    are reduced where they lie, without the copies."""
    for dtype, idx in _groups(arrays).items():
        sizes = [int(arrays[i].size) for i in idx]
        buf = _flat_buffer(comm, purpose, dtype, sum(sizes))
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
        if all(_is_view_at(arrays[i], buf, o) for i, o in zip(idx, offsets, strict=True)):
            op(buf)  # bound: the arrays are the buffer
            continue
        if any(isinstance(arrays[i], np.ndarray) and arrays[i].base is buf for i in idx):
            buf = np.empty_like(buf)  # some arrays view the buffer elsewhere: do not overwrite
        o = 0
        for i, n in zip(idx, sizes, strict=True):
            buf[o:o + n] = to_numpy(arrays[i]).reshape(-1)
            o += n
        op(buf)
        o = 0
        for i, n in zip(idx, sizes, strict=True):
            a = arrays[i]
            a[...] = get_array_module(a).asarray(buf[o:o + n].reshape(a.shape))
            o += n


# --------------------------------------------------------------------------------------------
# Parameters and gradients
# --------------------------------------------------------------------------------------------


def broadcast_parameters(params, comm: Comm | None = None, root: int = 0) -> None:
    """Overwrite every rank's parameter values with ``root``'s, in place (``p.data`` keeps its
    array object; gradients are untouched). One fused ``MPI_Bcast`` per dtype.

    Call once after building (or loading) the model, before the first iteration. Collective:
    every rank must call it with the same parameter list.

    Raises:
        ParameterMismatchError: the ranks' names/shapes/dtypes differ (raised on every rank).
        ValueError: ``root`` is not a rank.
    """
    comm = resolve(comm)
    check_root(root, comm.size)
    if not comm.is_distributed:
        return
    named = named_params(params)
    check_same_layout(named, comm, "broadcast_parameters")
    _fused(comm, "bcast", [p.data for _, p in named], lambda buf: comm.Bcast(buf, root=root))


def allreduce_gradients(params, comm: Comm | None = None) -> None:
    """Sum every parameter's gradient over all ranks, in place (``p.grad`` keeps its array).

    One fused ``MPI_Allreduce(SUM)`` per call (per dtype; a float32 model makes exactly one):
    the gradients are copied into a flat, C-contiguous buffer of their dtype (preallocated on
    the first call and reused while the total size is the same), reduced in place, and copied
    back; after :func:`bind_gradient_buffer` the gradients are views of that buffer and the
    copies are skipped. No averaging: with loss normalisers summed across ranks (see the module
    docstring) the sum is the one-process gradient. Collective: every rank must call it with the
    same parameter list (same names, shapes, dtypes, order; not checked here, for speed: use
    :func:`~minimaskrcnn.distributed.check_parameters_equal` at start). A no-op for one process.
    """
    comm = resolve(comm)
    if not comm.is_distributed:
        return
    _fused(comm, "grad", [p.grad for _, p in named_params(params)],
           lambda buf: comm.Allreduce(IN_PLACE, buf, op=SUM))


def bind_gradient_buffer(params, comm: Comm | None = None) -> list[np.ndarray]:
    """Make every NumPy ``p.grad`` a view into the flat buffer :func:`allreduce_gradients`
    reduces (one buffer per dtype, parameters in order), keeping the gradients' values; then
    :func:`allreduce_gradients` reduces in place without copying in and out (on 2 ranks of the
    2-core machine the copies of nuclei-mini's 9.9 MB took longer than the allreduce itself).

    Call once after the model is built (and after any ``Module.astype``/``to``, which rebind
    ``p.grad``). Safe to skip: unbound (or later rebound) gradients are copied, with the same
    result. ``Param.zero_grad`` and the layers' ``grad +=`` keep the views. CuPy gradients are
    left as they are. Local (no communication); a no-op for one process.

    Returns:
        the flat buffers (views' owners), one per dtype; ``[]`` for one process.
    """
    comm = resolve(comm)
    if not comm.is_distributed:
        return []
    grads = [p for _, p in named_params(params) if isinstance(p.grad, np.ndarray)]
    out = []
    for dtype, idx in _groups([p.grad for p in grads]).items():
        sizes = [int(grads[i].grad.size) for i in idx]
        values = [grads[i].grad.copy() for i in idx]  # the old grads may view an old buffer
        buf = _flat_buffer(comm, "grad", dtype, sum(sizes))
        o = 0
        for i, n, v in zip(idx, sizes, values, strict=True):
            view = buf[o:o + n].reshape(v.shape)
            view[...] = v
            grads[i].grad = view
            o += n
        out.append(buf)
    return out


# --------------------------------------------------------------------------------------------
# Small values and results
# --------------------------------------------------------------------------------------------


def allreduce_sum(values, comm: Comm | None = None):
    """Sum small things over all ranks (loss sums, normaliser counts) in one allreduce.

    Args:
        values: a number (returns the sum as a Python ``int``/``float``; bools count as ints),
            a list/tuple of numbers or a NumPy array (returns a new ``np.ndarray`` of the same
            shape: ``int64`` for integer input, ``float64`` for float lists, the array's own
            dtype for a float array), or a ``{key: number}`` dict (returns a dict of sums, ``int``
            where the value was an int, else ``float``). Integer counts sum exactly (below
            2**53 in a dict mixing ints and floats, which is reduced as float64).
        comm: defaults to :func:`get_comm`.

    Raises:
        TypeError: non-numeric values.
    """
    comm = resolve(comm)
    if isinstance(values, dict):
        keys = list(values)
        sums = allreduce_sum([values[k] for k in keys], comm)
        return {k: (int(s) if isinstance(values[k], (int, np.integer)) else s)
                for k, s in zip(keys, sums.tolist(), strict=True)}
    scalar = np.ndim(values) == 0 and not isinstance(values, np.ndarray)
    a = np.asarray(to_numpy(values))
    if a.dtype.kind in "biu":
        a = a.astype(np.int64)
    elif a.dtype.kind == "f":
        if not isinstance(values, np.ndarray):
            a = a.astype(np.float64)
    else:
        raise TypeError(f"allreduce_sum: values must be numbers, got dtype {a.dtype}")
    buf = np.ascontiguousarray(a).copy()
    comm.Allreduce(IN_PLACE, buf.reshape(-1), op=SUM)
    return buf.item() if scalar else buf


def gather_to_main(items: Iterable, comm: Comm | None = None) -> list | None:
    """Concatenate the ranks' lists on rank 0, in rank order (pickled ``MPI_Gather``).

    With :func:`shard`'s contiguous shares, rank 0 gets the items in global order: e.g. each
    rank's detections for its shard of the images become the one-process detection list.

    Returns:
        rank 0: ``list`` (rank 0's items, then rank 1's, ...); other ranks: ``None``. One
        process: ``list(items)``.
    """
    comm = resolve(comm)
    mine = list(items)
    parts = comm.gather(mine, root=0)
    if not comm.is_main:
        return None
    return [x for part in parts for x in part]
