"""Data-parallel training under ``mpiexec -n 2`` equals one process: the parameters after a few
iterations, a resume with another number of ranks, the sharded evaluation's metrics; and a rank
that fails stops the whole job without a hang, leaving the last good checkpoint intact.

Each MPI run is a subprocess (``tests/training/mpi_train_worker.py``) with a timeout, so a hang
fails the test instead of stalling the suite. Skipped (with the reason) without mpi4py/mpiexec,
which the project installs (core dependencies).
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from minimaskrcnn.distributed import FORCE_ENV_VAR, MPI_LAUNCHER_ENV_VARS

WORKER = os.path.join(os.path.dirname(__file__), "mpi_train_worker.py")
BINDIR = os.path.dirname(sys.executable)
MPIEXEC = shutil.which("mpiexec", path=BINDIR + os.pathsep + os.environ.get("PATH", ""))
try:
    import mpi4py  # noqa: F401

    HAVE_MPI4PY = True
except ImportError:  # pragma: no cover
    HAVE_MPI4PY = False
pytestmark = pytest.mark.skipif(MPIEXEC is None or not HAVE_MPI4PY,
                                reason="needs mpi4py and mpiexec (pip install mpi4py mpich)")


def _env():
    env = {k: v for k, v in os.environ.items()
           if k not in MPI_LAUNCHER_ENV_VARS and k != FORCE_ENV_VAR}
    env["NUMBA_NUM_THREADS"] = "1"  # two ranks on two cores
    return env


def run(scenario, out, iterations=3, ranks=1, timeout=240):
    cmd = [sys.executable, WORKER, scenario, str(out), str(iterations)]
    if ranks > 1:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def params(out, iteration):
    with np.load(os.path.join(out, f"checkpoint_{iteration:06d}.npz"), allow_pickle=False) as z:
        return {k: z[k] for k in z.files if k.startswith("param/")}


def assert_same_parameters(a, b):
    assert a.keys() == b.keys() and a
    worst = max(float(np.abs(a[k] - b[k]).max() / max(np.abs(a[k]).max(), 1e-12)) for k in a)
    # float32 throughout; the ranks sum the loss terms and the gradients in another order, and
    # three SGD steps carry those last-bit differences: parameters agree to ~1e-6 relative.
    assert worst < 1e-4, worst


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process for 3 iterations; two ranks for 3; two ranks for 2 then one process to 3."""
    root = tmp_path_factory.mktemp("mpi")
    one, two, mixed = root / "one", root / "two", root / "mixed"
    for out, steps in ((one, [(1, 3)]), (two, [(2, 3)]), (mixed, [(2, 2), (1, 3)])):
        for k, (ranks, iterations) in enumerate(steps):
            r = run("train" if k == 0 else "resume", out, iterations, ranks)
            assert r.returncode == 0, r.stderr[-3000:]
    return one, two, mixed


def test_two_ranks_train_the_parameters_of_one_process(runs):
    one, two, _ = runs
    for it in (1, 3):
        assert_same_parameters(params(one, it), params(two, it))
    # the logs agree too: rank 0 wrote the batch's loss terms, summed over the ranks
    logs = [[json.loads(line) for line in open(os.path.join(o, "log.jsonl"))] for o in (one, two)]
    for a, b in zip(*logs, strict=True):
        for k in ("loss_objectness", "loss_classifier", "loss_mask", "loss"):
            assert a[k] == pytest.approx(b[k], rel=1e-5), k
    # rank 0 alone wrote the run folder: one log line per iteration, no duplicates
    assert [r["iteration"] for r in logs[1]] == [0, 1, 2]


def test_resume_with_another_number_of_ranks(runs):
    one, _, mixed = runs
    assert_same_parameters(params(one, 3), params(mixed, 3))


def test_sharded_evaluation_equals_one_process(runs):
    one = runs[0]
    for ranks in (1, 2):
        r = run("evaluate", one, 3, ranks)
        assert r.returncode == 0, r.stderr[-3000:]
    m1, m2 = (json.load(open(os.path.join(one, f"eval_{w}.json"))) for w in (1, 2))
    assert m1["num_images"] == m2["num_images"] == 6
    assert m1 == m2  # exactly: same predictions, masks gathered losslessly (RLE)


def test_a_failing_rank_stops_the_job_and_the_last_checkpoint_survives(tmp_path):
    out = tmp_path / "fail"
    r = run("fail", out, 5, ranks=2, timeout=120)
    assert r.returncode != 0
    # the loop names the iteration and the last good checkpoint; abort_on_error the rank
    assert ("[rank 1] NonFiniteLossError: iteration 2: model.forward_train failed (ValueError: "
            "a bad record in this rank's share of the batch)") in r.stderr
    assert "checkpoint_000002.npz" in r.stderr
    assert "Traceback" not in r.stderr
    with open(out / "last_checkpoint") as f:
        name = f.read().strip()
    assert name == "checkpoint_000002.npz"  # iterations 0 and 1 done, the third failed
    p = params(out, 2)
    assert all(np.isfinite(v).all() for v in p.values())


def test_roi_exchange_gives_the_gradient_of_one_process():
    """Two ranks with the crops dealt by instances and the mask head's RoIs evened out: the
    losses and gradients of one process, for the FCN, MLP and class-agnostic mask heads, with
    RoIs actually passed between the ranks."""
    worker = os.path.join(os.path.dirname(__file__), "mpi_exchange_worker.py")
    out = subprocess.run([MPIEXEC, "-n", "2", sys.executable, worker], env=_env(),
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [r["variant"] for r in rows] == ["fcn", "mlp", "agnostic"], out.stdout
    for r in rows:
        assert r["moved"] > 0, r  # the exchange ran
        assert sorted(k for share in r["shares"] for k in share) == [0, 1, 2, 3], r
        assert r["loss_diff"] < 1e-5, r
        # float32; the same sums in another order
        assert r["grad_rel_diff"] < 1e-4, r
