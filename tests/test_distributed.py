"""minimaskrcnn.distributed: the single-process stub, the work-splitting arithmetic, the launcher's
choices, the allreduce cost model of benchmarks/bench_allreduce.py, and (in subprocesses under
``mpiexec -n 2``) the collectives and the abort path.

The MPI tests spawn ``mpiexec -n 2 python <script> <scenario>`` with a timeout: a hang fails the
test instead of the suite. They skip when mpi4py or mpiexec is missing (``pip install
'minimaskrcnn[mpi]'``; CI installs it).
"""

import itertools
import os
import shutil
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minimaskrcnn import distributed as dist
from minimaskrcnn.nn.module import Param

# -- helpers -----------------------------------------------------------------------------------


class FakeComm(dist.SingleProcessComm):
    """A rank/size pair for the pure arithmetic (no collective is called)."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size


class DoublingComm(FakeComm):
    """Rank 0 of 2 whose partner holds the same values: the allreduce sum doubles the buffer."""

    def __init__(self):
        super().__init__(0, 2)
        self.calls = 0

    def Allreduce(self, sendbuf, buf, op=dist.SUM):  # noqa: N802
        assert sendbuf is dist.IN_PLACE and op is dist.SUM
        assert buf.flags.c_contiguous and buf.ndim == 1
        self.calls += 1
        buf *= 2


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in dist.MPI_LAUNCHER_ENV_VARS and k != dist.FORCE_ENV_VAR}
    env.update(extra)
    return env


def _mpiexec():
    bindir = os.path.dirname(sys.executable)
    return shutil.which("mpiexec", path=bindir + os.pathsep + os.environ.get("PATH", ""))


def _have_mpi4py():
    try:
        import importlib.util

        return importlib.util.find_spec("mpi4py") is not None
    except ImportError:  # pragma: no cover
        return False


MPIEXEC = _mpiexec()
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None or not _have_mpi4py(),
    reason="needs mpi4py and an mpiexec (pip install 'minimaskrcnn[mpi]': mpi4py + the mpich "
           "wheel); CI installs them")

# -- the single-process stub -------------------------------------------------------------------


def test_one_process_does_not_import_mpi4py():
    code = textwrap.dedent("""
        import sys
        import numpy as np
        from minimaskrcnn.nn.module import Param
        from minimaskrcnn import distributed as d
        c = d.get_comm()
        assert isinstance(c, d.SingleProcessComm), c
        assert (c.rank, c.size, c.is_main, c.is_distributed) == (0, 1, True, False)
        ps = [("w", Param(np.ones(3, np.float32)))]
        ps[0][1].grad[:] = 2
        d.broadcast_parameters(ps); d.check_parameters_equal(ps); d.allreduce_gradients(ps)
        assert (ps[0][1].grad == 2).all()
        assert d.allreduce_sum(3) == 3 and d.gather_to_main([1, 2]) == [1, 2]
        assert d.split_batch(4) == [0, 1, 2, 3] and d.shard(5) == range(5)
        with d.abort_on_error():
            pass
        print("mpi4py" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("env, expected", [
    ({}, False),
    ({"PATH": "/usr/bin"}, False),
    ({"PMI_SIZE": "2", "PMI_RANK": "0"}, True),        # MPICH hydra, Intel MPI, Slurm PMI2
    ({"MPI_LOCALNRANKS": "2"}, True),                  # MPICH hydra
    ({"OMPI_COMM_WORLD_SIZE": "4"}, True),             # Open MPI
    ({"PMIX_RANK": "3"}, True),                        # PMIx launchers
    ({"PMI_SIZE": "2", "MINIMASKRCNN_MPI": "0"}, False),
    ({"MINIMASKRCNN_MPI": "1"}, True),
])
def test_launcher_detection(env, expected):
    assert dist.launched_by_mpi(env) is expected


def test_bad_force_value():
    with pytest.raises(ValueError, match="MINIMASKRCNN_MPI must be 0 or 1"):
        dist.launched_by_mpi({"MINIMASKRCNN_MPI": "yes"})


def test_single_process_collectives():
    c = dist.SingleProcessComm()
    assert dist.allreduce_sum(2.5, c) == 2.5 and isinstance(dist.allreduce_sum(2.5, c), float)
    assert dist.allreduce_sum(True, c) == 1 and isinstance(dist.allreduce_sum(7, c), int)
    got = dist.allreduce_sum([1, 2], c)
    assert got.dtype == np.int64 and got.tolist() == [1, 2]
    a = np.ones((2, 2), np.float32)
    got = dist.allreduce_sum(a, c)
    assert got.dtype == np.float32 and got is not a and (got == a).all()
    assert dist.allreduce_sum({"n": 3, "loss": 0.5}, c) == {"n": 3, "loss": 0.5}
    assert isinstance(dist.allreduce_sum({"n": 3}, c)["n"], int)
    with pytest.raises(TypeError, match="numbers"):
        dist.allreduce_sum("abc", c)
    assert dist.gather_to_main(iter([3, 1]), c) == [3, 1]
    with pytest.raises(ValueError, match="root"):
        dist.broadcast_parameters([], c, root=1)


def test_abort_on_error_one_process_reraises():
    with pytest.raises(ValueError, match="boom"), dist.abort_on_error(dist.SingleProcessComm()):
        raise ValueError("boom")


def test_error_line():
    assert dist.error_line(ValueError("bad image 7"), 1) == "[rank 1] ValueError: bad image 7"
    assert dist.error_line(OSError("a\nb"), 0) == "[rank 0] OSError: a\n[rank 0] b"
    assert dist.error_line(KeyboardInterrupt(), 2) == "[rank 2] KeyboardInterrupt: (no message)"


def test_checksum_is_exact():
    rng = np.random.default_rng(0)
    ps = [(f"p{i}", Param(rng.standard_normal((2, 3)).astype(np.float32))) for i in range(3)]
    copy = [(n, Param(p.data.copy())) for n, p in ps]
    assert dist.parameter_checksum(ps) == dist.parameter_checksum(copy)
    assert dist.check_parameters_equal(ps, dist.SingleProcessComm()) == dist.parameter_checksum(ps)
    copy[1][1].data[0, 0] = np.nextafter(copy[1][1].data[0, 0], np.float32(np.inf))
    assert dist.parameter_checksum(ps) != dist.parameter_checksum(copy)
    renamed = [("q0", ps[0][1])] + ps[1:]
    assert dist.parameter_checksum(ps) != dist.parameter_checksum(renamed)
    digests = dist.parameter_digests(dict(ps))
    assert [n for n, _ in digests] == ["p0", "p1", "p2"]
    with pytest.raises(TypeError, match="not a Param"):
        dist.parameter_checksum([("x", np.ones(2))])


def _grad_params(dtypes=(np.float32, np.float32, np.float64, np.float32)):
    shapes = [(3, 4), (5,), (2, 2), (1, 2, 3)]
    ps = [(f"p{i}", Param(np.zeros(s, t))) for i, (s, t) in enumerate(zip(shapes, dtypes, strict=True))]
    for k, (_, p) in enumerate(ps):
        p.grad[...] = np.arange(p.grad.size).reshape(p.grad.shape) + 10 * k
    return ps


def _expected(ps):
    return [2 * (np.arange(p.grad.size).reshape(p.grad.shape) + 10 * k)
            for k, (_, p) in enumerate(ps)]


def test_fused_allreduce_copies_into_one_buffer_per_dtype():
    comm, ps = DoublingComm(), _grad_params()
    grads = [p.grad for _, p in ps]
    expected = _expected(ps)
    dist.allreduce_gradients(ps, comm)
    assert comm.calls == 2  # float32 and float64
    for (_, p), g, e in zip(ps, grads, expected, strict=True):
        assert p.grad is g and p.grad.dtype == g.dtype and np.array_equal(p.grad, e)
    assert sorted((k[1], k[2]) for k in comm._flat_buffers) == [("<f4", 23), ("<f8", 4)]
    bufs = {k: id(b) for k, b in comm._flat_buffers.items()}
    dist.allreduce_gradients(ps, comm)  # the buffers are reused
    assert {k: id(b) for k, b in comm._flat_buffers.items()} == bufs
    assert all(np.array_equal(p.grad, 2 * e) for (_, p), e in zip(ps, expected, strict=True))


def test_bound_gradients_are_reduced_without_copies():
    comm, ps = DoublingComm(), _grad_params(dtypes=(np.float32,) * 4)
    expected = _expected(ps)
    [buf] = dist.bind_gradient_buffer(ps, comm)
    assert all(p.grad.base is buf for _, p in ps)
    assert np.array_equal(buf, np.concatenate([e.ravel() / 2 for e in expected]))  # values kept
    for _, p in ps:  # zero_grad and += keep the views
        p.zero_grad()
    for k, (_, p) in enumerate(ps):
        p.grad += np.arange(p.grad.size).reshape(p.grad.shape) + 10 * k
    dist.allreduce_gradients(ps, comm)
    assert comm.calls == 1 and all(p.grad.base is buf for _, p in ps)
    assert all(np.array_equal(p.grad, e) for (_, p), e in zip(ps, expected, strict=True))
    # a reordered list (views at the wrong offsets) falls back to copying, still correct
    rev = ps[::-1]
    dist.allreduce_gradients(rev, comm)
    assert all(np.array_equal(p.grad, 2 * e) for (_, p), e in zip(ps, expected, strict=True))
    assert dist.bind_gradient_buffer(ps, dist.SingleProcessComm()) == []


def test_broadcast_layout_check_and_single_dtype_buffers():
    comm, ps = DoublingComm(), _grad_params()
    dist.broadcast_parameters(ps, comm)  # Bcast is the identity on the fake
    assert all((p.data == 0).all() for _, p in ps)


# -- splitting work ----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 5, 7, 16, 101])
@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_shard_range_partitions_in_order(n, size):
    parts = [dist.shard_range(n, r, size) for r in range(size)]
    assert [i for p in parts for i in p] == list(range(n))
    lengths = [len(p) for p in parts]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


def test_shard_types():
    assert dist.shard(7, FakeComm(1, 2)) == range(4, 7)
    assert dist.shard([10, 11, 12, 13, 14], FakeComm(0, 2)) == [10, 11, 12]
    assert dist.shard((1, 2, 3), FakeComm(2, 3)) == (3,)
    np.testing.assert_array_equal(dist.shard(np.arange(6), FakeComm(1, 3)), [2, 3])

    class Dataset:
        def __len__(self):
            return 5

        def __getitem__(self, i):
            if not isinstance(i, int):
                raise TypeError("integer indices only")
            return f"img{i}"

    assert dist.shard(Dataset(), FakeComm(1, 2)) == ["img3", "img4"]
    assert dist.shard(1, FakeComm(1, 2)) == range(1, 1)  # more ranks than items: empty share


@pytest.mark.parametrize("n, rank, size, match", [
    (-1, 0, 1, "count must be >= 0"), (3, 0, 0, "size must be >= 1"),
    (3, 2, 2, r"rank must be in \[0, 2\)"), (3, -1, 2, "rank must be in"),
])
def test_shard_range_errors(n, rank, size, match):
    with pytest.raises(ValueError, match=match):
        dist.shard_range(n, rank, size)


def test_split_batch_blocks():
    assert [dist.split_batch(8, FakeComm(r, 4)) for r in range(4)] == [
        [0, 1], [2, 3], [4, 5], [6, 7]]
    assert dist.split_batch(4, FakeComm(1, 2)) == [2, 3]
    assert dist.split_batch(3, FakeComm(0, 1)) == [0, 1, 2]
    for b, w in [(4, 4), (12, 3), (6, 2)]:
        got = [k for r in range(w) for k in dist.split_batch(b, FakeComm(r, w))]
        assert got == list(range(b))


def test_split_batch_errors():
    with pytest.raises(ValueError, match=r"batch size 6 is not divisible by the number of MPI "
                                         r"ranks 4.*batch size of 4, 8"):
        dist.split_batch(6, FakeComm(0, 4))
    with pytest.raises(ValueError, match="batch size of 3"):
        dist.split_batch(2, FakeComm(0, 3))
    with pytest.raises(ValueError, match=">= 1"):
        dist.split_batch(0, FakeComm(0, 1))


def test_assign_by_cost_longest_first_to_the_least_loaded_rank():
    # by hand: 58 -> rank 0; 37 -> rank 1; 36 -> rank 1 (37 < 58); 35 -> rank 0 (58 < 73)
    assert dist.assign_by_cost([58, 37, 36, 35], 2) == [[0, 3], [1, 2]]
    # one crop as costly as the three others together: 3 images on one rank, 1 on the other
    assert dist.assign_by_cost([90, 30, 30, 30], 2) == [[0], [1, 2, 3]]
    # equal costs: round robin in position order, as many images per rank
    assert dist.assign_by_cost([1.0] * 6, 3) == [[0, 3], [1, 4], [2, 5]]
    assert dist.assign_by_cost([5, 1], 1) == [[0, 1]]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3).flatmap(lambda w: st.tuples(
    st.just(w), st.lists(st.integers(0, 60), min_size=w, max_size=7))))
def test_assign_by_cost_partitions_within_grahams_bound(case):
    w, counts = case
    costs = [25 + c for c in counts]
    shares = dist.assign_by_cost(costs, w)
    assert sorted(k for share in shares for k in share) == list(range(len(costs)))
    assert all(share == sorted(share) and share for share in shares)  # sorted, none empty
    best = min(max(sum(costs[k] for k in range(len(costs)) if owner[k] == r) for r in range(w))
               for owner in itertools.product(range(w), repeat=len(costs)))
    worst = max(sum(costs[k] for k in share) for share in shares)
    assert worst <= (4 / 3 - 1 / (3 * w)) * best + 1e-9  # Graham's bound for LPT


def test_balance_batch_shares_the_batch_by_instances():
    instances = [10, 56, 49, 7]  # contiguous blocks would give 66 and 56 instances
    shares = [dist.balance_batch(instances, FakeComm(r, 2)) for r in range(2)]
    assert shares == [[1, 3], [0, 2]]  # 63 and 59 instances
    assert dist.balance_batch(instances, FakeComm(0, 1)) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="3 images cannot be shared by 4 ranks"):
        dist.balance_batch([1, 2, 3], FakeComm(0, 4))
    with pytest.raises(ValueError, match="finite numbers >= 0"):
        dist.balance_batch([1, -30], FakeComm(0, 2))
    with pytest.raises(ValueError, match="finite numbers >= 0"):
        dist.balance_batch([1, float("nan")], FakeComm(0, 1))


def test_plan_roi_transfers_evens_the_work_out():
    # equal images: equal RoIs; rank 0 hands its surplus to rank 1
    assert dist.plan_roi_transfers([30, 10], [2, 2]) == [(0, 1, 10)]
    # rank 0 has 3 images (75 instances of work) and rank 1 one (25): all 10 RoIs to rank 1
    assert dist.plan_roi_transfers([5, 5], [3, 1]) == [(0, 1, 5)]
    assert dist.plan_roi_transfers([4, 4], [2, 2]) == []  # already even
    assert dist.plan_roi_transfers([5, 4], [2, 2]) == []  # one RoI apart: as even as can be
    assert dist.plan_roi_transfers([9, 0, 0], [1, 1, 1]) == [(0, 1, 3), (0, 2, 3)]
    assert dist.plan_roi_transfers([0, 2, 10], [1, 1, 1]) == [(2, 0, 4), (2, 1, 2)]
    assert dist.plan_roi_transfers([0, 0], [2, 2]) == []


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(1, 4)), min_size=1, max_size=5))
def test_plan_roi_transfers_conserves_and_balances(ranks):
    rois, images = [r for r, _ in ranks], [i for _, i in ranks]
    after = list(rois)
    for src, dst, n in dist.plan_roi_transfers(rois, images):
        assert n > 0 and src != dst
        after[src] -= n
        after[dst] += n
    assert sum(after) == sum(rois) and min(after) >= 0
    senders = {s for s, _, _ in dist.plan_roi_transfers(rois, images)}
    receivers = {d for _, d, _ in dist.plan_roi_transfers(rois, images)}
    assert not senders & receivers  # no RoI passes through a rank
    work = [25 * i + a for i, a in zip(images, after, strict=True)]
    # a rank left with RoIs is at most one RoI above the least loaded rank
    assert all(work[r] <= min(work) + 1 for r in range(len(work)) if after[r]), (work, after)


def test_roi_exchange_in_one_process_is_the_identity():
    ex = dist.RoIExchange(dist.SingleProcessComm(), images=4)
    arrays = (np.ones((3, 2, 2), np.float32), np.arange(3))
    held, plan = ex.scatter(arrays)
    assert held is arrays
    grad = np.zeros((3, 2, 2), np.float32)
    assert ex.gather_gradient(grad, plan) is grad


# -- the launcher's choices ---------------------------------------------------------------------


def test_choose_workers_divides_the_batch_and_fits_the_cores():
    assert dist.choose_workers(None, 2, 2) == 2  # README's demo on a 2-core machine: both cores
    assert dist.choose_workers(None, 2, 16) == 2  # no more ranks than images in a batch
    assert dist.choose_workers(None, 4, 3) == 2  # the most that divide the batch and fit the cores
    assert dist.choose_workers(None, 2, 1) == 1
    assert dist.choose_workers(1, 2, 8) == 1
    for bad in (3, 0):
        with pytest.raises(ValueError, match="must divide the batch size 2"):
            dist.choose_workers(bad, 2, 8)


def test_usable_cores_and_mpiexec():
    assert 1 <= dist.usable_cores() <= (os.cpu_count() or 1)
    found = dist.find_mpiexec()
    assert found is None or os.access(found, os.X_OK)
    if not _have_mpi4py():
        assert found is None  # mpiexec without mpi4py is of no use here


def test_single_process_allreduce_spelling():
    c = dist.SingleProcessComm()
    buf = np.arange(3.0)
    c.Allreduce(dist.IN_PLACE, buf, op=dist.SUM)  # one rank: the sum is the buffer itself
    assert buf.tolist() == [0, 1, 2]
    out = np.zeros(3)
    c.Allreduce(buf, out)  # a send buffer: copied into the receive buffer
    assert out.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="only op=SUM"):
        c.Allreduce(dist.IN_PLACE, buf, op="max")


# -- cost model (benchmarks/bench_allreduce.py) ------------------------------------------------


def _bench_allreduce():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "bench_allreduce.py")
    spec = importlib.util.spec_from_file_location("bench_allreduce", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ring_allreduce_cost_model():
    ring_allreduce_seconds = _bench_allreduce().ring_allreduce_seconds
    nbytes = 4 * 2_479_803
    assert ring_allreduce_seconds(nbytes, 1, 10e9) == 0
    t = ring_allreduce_seconds(nbytes, 8, 10e9, latency_s=0)
    assert t == pytest.approx(2 * 7 / 8 * nbytes * 8 / 10e9)
    assert ring_allreduce_seconds(0, 4, 1e9, latency_s=1e-3) == pytest.approx(6e-3)
    # bandwidth term tends to 2 * nbytes / bandwidth as W grows
    assert ring_allreduce_seconds(nbytes, 10**6, 1e9, 0) == pytest.approx(
        2 * nbytes * 8 / 1e9, rel=1e-5)
    for bad in [(-1, 2, 1e9), (1, 0, 1e9), (1, 2, 0), (1, 2, 1e9, -1)]:
        with pytest.raises(ValueError):
            ring_allreduce_seconds(*bad)


# -- under mpiexec -n 2 ------------------------------------------------------------------------

SCRIPT = r'''
import sys
import numpy as np
from minimaskrcnn.nn.module import Param
from minimaskrcnn import distributed as d

c = d.get_comm()
assert isinstance(c, d.MPIComm) and c.size == 2, c
scenario = sys.argv[1]


def params(seed, shapes=((3, 4), (5,), (2, 2, 2)), dtypes=None):
    rng = np.random.default_rng(seed)
    dtypes = dtypes or [np.float32] * len(shapes)
    return [(f"p{i}", Param(rng.standard_normal(s).astype(t)))
            for i, (s, t) in enumerate(zip(shapes, dtypes))]


def say(*a):
    sys.stdout.write(" ".join([f"rank{c.rank}", *map(str, a)]) + "\n")  # one write per line
    sys.stdout.flush()


if scenario == "broadcast":
    ps = params(seed=10 + c.rank)               # different values on each rank
    ref = [p.data.copy() for _, p in params(seed=10)]
    ids = [id(p.data) for _, p in ps]
    d.broadcast_parameters(ps, c)
    assert all(np.array_equal(p.data, r) for (_, p), r in zip(ps, ref))
    assert [id(p.data) for _, p in ps] == ids  # in place
    s = d.check_parameters_equal(ps, c)
    assert c.allgather(s) == [s, s] and s == d.parameter_checksum(ps)
    say("OK")

elif scenario == "allreduce":
    dtypes = [np.float32, np.float32, np.float64]
    ps = params(seed=0, dtypes=dtypes)
    grads = [p.grad for _, p in ps]
    for it in range(3):
        for k, (_, p) in enumerate(ps):
            # integer-valued floats: the sum is exact
            p.grad[...] = (np.arange(p.grad.size).reshape(p.grad.shape) + 7 * k + it) * (c.rank + 1)
        d.allreduce_gradients(ps, c)
        for k, (_, p) in enumerate(ps):
            expected = (np.arange(p.grad.size).reshape(p.grad.shape) + 7 * k + it) * 3
            assert p.grad.dtype == dtypes[k]
            assert np.array_equal(p.grad, expected), (k, p.grad, expected)
        if it == 0:
            bufs = {k: id(v) for k, v in c._flat_buffers.items()}
    assert all(p.grad is g for (_, p), g in zip(ps, grads))  # in place
    # one float32 buffer (3*4 + 5 elements) and one float64 buffer (8), reused across calls
    assert sorted((k[1], k[2]) for k in c._flat_buffers) == [("<f4", 17), ("<f8", 8)]
    assert {k: id(v) for k, v in c._flat_buffers.items()} == bufs
    assert d.allreduce_sum(c.rank + 1, c) == 3
    assert d.allreduce_sum({"n_fg": 2 + c.rank, "loss": 0.5}, c) == {"n_fg": 5, "loss": 1.0}
    got = d.allreduce_sum(np.full(3, c.rank + 1, np.float32), c)
    assert got.dtype == np.float32 and got.tolist() == [3, 3, 3]
    bufs = d.bind_gradient_buffer(ps, c)         # grads become views: reduced without copies
    assert len(bufs) == 2 and all(p.grad.base is not None for _, p in ps)
    for k, (_, p) in enumerate(ps):
        p.zero_grad()
        p.grad += (k + 1) * (c.rank + 1)
    d.allreduce_gradients(ps, c)
    assert all((p.grad == 3 * (k + 1)).all() for k, (_, p) in enumerate(ps))
    say("OK")

elif scenario == "gather":
    mine = d.shard(list(range(100, 107)), c)     # 4 items on rank 0, 3 on rank 1
    assert len(mine) == (4 if c.rank == 0 else 3)
    dets = [{"image": i, "rank": c.rank} for i in mine]
    got = d.gather_to_main(dets, c)
    if c.is_main:
        assert [x["image"] for x in got] == list(range(100, 107)), got
        assert [x["rank"] for x in got] == [0] * 4 + [1] * 3
    else:
        assert got is None
    assert d.split_batch(4, c) == ([0, 1] if c.rank == 0 else [2, 3])
    try:
        d.split_batch(3, c)
    except ValueError as e:
        assert "not divisible" in str(e)
    else:
        raise AssertionError("split_batch(3) under 2 ranks did not raise")
    say("OK")

elif scenario == "exchange":
    # rank 0 holds 7 RoIs, rank 1 holds 1, both with 2 images: rank 0 hands its last 3 over
    n = 7 if c.rank == 0 else 1
    feats = (np.arange(n * 4, dtype=np.float32).reshape(n, 2, 2) + 100 * c.rank)
    labels = np.arange(n) + 10 * c.rank
    ex = d.RoIExchange(c, images=2)
    (held, held_labels), plan = ex.scatter((feats, labels))
    assert held.shape[0] == 4 and held_labels.shape[0] == 4
    if c.rank == 0:
        assert held_labels.tolist() == [0, 1, 2, 3]
    else:  # its own RoI first, then rank 0's last three, in order
        assert held_labels.tolist() == [10, 4, 5, 6], held_labels
        assert np.array_equal(held[1:], np.arange(16, 28, dtype=np.float32).reshape(3, 2, 2))
    # a gradient that names each held RoI comes back to the RoI's owner, in its order
    back = ex.gather_gradient(held * 2 + 1, plan)
    assert np.array_equal(back, feats * 2 + 1), (back, feats)
    # balanced already: no alltoall, the arrays pass through
    same, plan = ex.scatter((np.ones((3, 2)),))
    assert same[0].shape == (3, 2) and ex.gather_gradient(same[0], plan) is same[0]
    say("OK")

elif scenario == "mismatch":
    ps = params(seed=0)
    if c.rank == 1:
        ps[1][1].data[2] += 1e-3                # p1 differs on rank 1; p0 and p2 equal
        ps[2][1].data[0, 0, 0] += 1
    try:
        d.check_parameters_equal(ps, c)
    except d.ParameterMismatchError as e:
        say("CAUGHT", e)
    else:
        raise AssertionError("no mismatch detected")
    shapes = ((3, 4), (5,)) if c.rank == 0 else ((3, 4), (6,))
    try:
        d.broadcast_parameters(params(seed=0, shapes=shapes), c)
    except d.ParameterMismatchError as e:
        say("LAYOUT", e)
    else:
        raise AssertionError("no layout mismatch detected")

elif scenario == "interrupt":                  # Ctrl-C reaching a rank in the middle of work
    with d.abort_on_error(c):
        if c.rank == 1:
            raise KeyboardInterrupt
        x = np.ones(4)
        c.Allreduce(d.IN_PLACE, x, op=d.SUM)
    say("NOT REACHED")

elif scenario in ("abort", "excepthook"):
    if scenario == "excepthook":
        d.install_excepthook(c)
        if c.rank == 1:
            raise OSError("disk full while writing checkpoint")
        c.barrier()                             # rank 0 waits for a rank that is gone
    with d.abort_on_error(c):
        if c.rank == 1:
            raise ValueError("bad image 7: annotation has no polygon")
        x = np.ones(4)
        c.Allreduce(d.IN_PLACE, x, op=d.SUM)    # would wait forever without the abort
    say("NOT REACHED")
'''


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("mpi") / "scenarios.py"
    path.write_text(SCRIPT)
    return path


def run_mpi(script, scenario, timeout=60):
    t0 = time.perf_counter()
    out = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script), scenario],
                         env=clean_env(PYTHONUNBUFFERED="1"), capture_output=True, text=True,
                         timeout=timeout)
    return out, time.perf_counter() - t0


@needs_mpi
@pytest.mark.parametrize("scenario", ["broadcast", "allreduce", "gather", "exchange"])
def test_collectives_under_mpiexec(script, scenario):
    out, _ = run_mpi(script, scenario)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rank0 OK" in out.stdout and "rank1 OK" in out.stdout, out.stdout


@needs_mpi
def test_checksum_mismatch_detected_on_every_rank(script):
    out, _ = run_mpi(script, "mismatch")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    caught = [ln for ln in lines if " CAUGHT " in ln]
    assert len(caught) == 2, out.stdout           # both ranks raise: none is left waiting
    for ln in caught:
        assert "first differing parameter 'p1'" in ln and "rank(s) 1 differ" in ln
        assert "2 of 3 parameters differ" in ln
    layout = [ln for ln in lines if " LAYOUT " in ln]
    assert len(layout) == 2 and all("p1" in ln and "rank 1" in ln for ln in layout), out.stdout


@needs_mpi
@pytest.mark.parametrize("scenario, message", [
    ("abort", "[rank 1] ValueError: bad image 7: annotation has no polygon"),
    ("excepthook", "[rank 1] OSError: disk full while writing checkpoint"),
])
def test_a_raising_rank_aborts_the_job(script, scenario, message):
    out, seconds = run_mpi(script, scenario, timeout=60)
    assert out.returncode != 0
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert "NOT REACHED" not in out.stdout
    assert seconds < 30, f"the job took {seconds:.1f} s to stop"


@needs_mpi
def test_ctrl_c_under_mpiexec_is_rc_130_interrupted(script):
    """issue 27: Ctrl-C under ``mpiexec train`` printed "[rank 0] KeyboardInterrupt: (no
    message)" with rc 1; one process says "interrupted" with rc 130, and so does the job."""
    out, seconds = run_mpi(script, "interrupt", timeout=60)
    assert out.returncode == 130, (out.returncode, out.stderr)
    assert "[rank 1] interrupted" in out.stderr and "KeyboardInterrupt" not in out.stderr
    assert "NOT REACHED" not in out.stdout and seconds < 30


class _Ranks:
    """A communicator whose allgather returns what each of several ranks gave (a stand-in for
    W processes: the comparison is the same on every rank)."""

    def __init__(self, values):
        self.values = values

    def allgather(self, obj):
        return list(self.values)


def test_first_disagreement_names_the_option_and_the_rank(tmp_path):
    from minimaskrcnn.distributed import file_fingerprint, first_disagreement

    a = {"--iters": 2, "--seed": 0}
    assert first_disagreement(a, _Ranks([a, dict(a), dict(a)])) is None
    line = first_disagreement(a, _Ranks([a, dict(a), {"--iters": 3, "--seed": 0}]))
    assert line.startswith("the ranks disagree: --iters is 3 on rank 2 but 2 on rank 0")
    line = first_disagreement(a, _Ranks([a, {**a, "--extra": 1}]))
    assert "--extra is 1 on rank 1 but None on rank 0" in line
    f = tmp_path / "train.json"
    f.write_text("[1]")
    one = file_fingerprint(str(f))
    assert one.startswith("3 bytes, sha256 ")
    f.write_text("[2]")
    assert file_fingerprint(str(f)) != one  # same size, other bytes
    assert file_fingerprint(str(tmp_path / "none")) == "missing"
    assert file_fingerprint(str(tmp_path)).startswith("a folder of 1 entries")
