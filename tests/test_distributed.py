"""gradflow.distributed, DistributedDataParallel, DistributedSampler and the launcher.

The multi-process tests start ``mpiexec -n 2`` jobs of tests/distributed_worker.py (one
BLAS thread per rank, a timeout on every job) and assert on what rank 0 wrote; the rest
(sampler arithmetic, the tape's post-accumulate-grad hooks, the launcher's command line)
run in this process without MPI.
"""
import json
import os
import subprocess
import sys
import time

import numpy
import pytest

import gradflow as gf
from gradflow import nn
from gradflow.data import DataLoader, DistributedSampler, TensorDataset
from gradflow.distributed import run as launcher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "distributed_worker.py")
JOB_TIMEOUT = 300  # seconds for one mpiexec job; a hang fails the test instead of the CI run

needs_mpi = pytest.mark.skipif(not gf.distributed.is_available(), reason="mpi4py is not installed")


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def _mpiexec_job(scenario, tmp, n=2, via_launcher=False, **env):
    if via_launcher:
        command = [sys.executable, "-m", "gradflow.distributed.run", "-n", str(n), WORKER, scenario, str(tmp)]
    else:
        command = [launcher.find_mpiexec(), "-n", str(n), sys.executable, WORKER, scenario, str(tmp)]
    start = time.monotonic()
    proc = subprocess.run(command, env=_env(**env), cwd=ROOT, capture_output=True, text=True, timeout=JOB_TIMEOUT)
    return proc, time.monotonic() - start


def _result(tmp):
    with open(os.path.join(tmp, "result.json")) as f:
        return json.load(f)


# ---- two ranks training (one job, started through the launcher) ------------------------------------------------
@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    if not gf.distributed.is_available():
        pytest.skip("mpi4py is not installed")
    tmp = tmp_path_factory.mktemp("ddp")
    proc, _ = _mpiexec_job("main", tmp, via_launcher=True)
    assert proc.returncode == 0, f"mpiexec job failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return _result(tmp)


def test_collectives_two_ranks(two_ranks):
    res = two_ranks["collectives"]
    assert two_ranks["world"] == 2
    assert all(res[op] for op in ("SUM", "AVG", "MAX", "MIN", "PRODUCT"))
    assert res["broadcast"] == [1.0, 1.0, 1.0]
    assert res["all_gather"] == [[0, 0], [1, 10]]
    assert res["async"] is True


@pytest.mark.parametrize("case", ["sgd", "adam", "one_bucket"])
def test_ddp_matches_one_process_on_the_whole_batch(two_ranks, case):
    """Two ranks on halves of each batch end where one process on the whole batch ends (float32 summation order
    aside), with parameters bit-identical across ranks after every step."""
    res = two_ranks[case]
    assert res["moved"] > 0.05            # the runs trained: the comparison is not between two initial states
    assert res["rank_spread"] == 0.0
    assert res["rel_diff_vs_single"] < 2e-5
    assert res["buckets"] == (1 if case == "one_bucket" else 4)


def test_ddp_no_sync_accumulation(two_ranks):
    res = two_ranks["no_sync"]
    assert res["unsynced_grad_spread"] > 1e-3   # inside no_sync the ranks' gradients stay their own
    assert res["rel_diff_vs_single"] < 2e-5
    assert res["rank_spread"] == 0.0


def test_ddp_under_compile_matches_eager(two_ranks):
    res = two_ranks["compile"]
    assert res["captured"] is True
    assert res["rel_diff"] == 0.0
    assert res["rank_spread"] == 0.0


def test_ddp_unused_parameters(two_ranks):
    res = two_ranks["unused"]
    assert res["b_grad_half_of_rank1"] and res["never_grad_is_none"]
    assert "received no gradient" in res["strict_error"] and "find_unused_parameters=True" in res["strict_error"]


def test_ddp_detects_mismatched_models(two_ranks):
    message = two_ranks["mismatch"]
    assert message is not None and "differs across ranks" in message
    assert "rank 1 has parameter 'layers.0.weight' of shape (24, 20)" in message
    assert "rank 0 has parameter 'layers.0.weight' of shape (32, 20)" in message


def test_fit_distributed(two_ranks):
    res = two_ranks["fit"]
    assert res["eager_rank_spread"] == 0.0
    assert res["histories_equal"]                # metrics averaged over ranks: every rank logs the same
    assert res["saves_per_rank"] == [2, 0]       # checkpoints on rank 0 only
    assert res["resume_vs_uninterrupted"] == 0.0 and res["resumed_epochs"] == [1, 2, 3]
    assert res["compile_vs_eager"] == 0.0 and not res["compile_warnings"]
    assert res["loss_history"][-1] < res["loss_history"][0]


def test_distributed_sampler_covers_each_index_once_per_epoch(two_ranks):
    for key, epochs in two_ranks["sampler"].items():
        n, drop_last = int(key.split("-")[0]), key.endswith("True")
        orders = []
        for shares in epochs:
            assert len(shares[0]) == len(shares[1])
            together = sorted(shares[0] + shares[1])
            if drop_last:
                assert len(together) == n - n % 2 and len(set(together)) == len(together)
            else:
                assert set(together) == set(range(n)) and len(together) == n + n % 2
            orders.append(shares[0] + shares[1])
        assert orders[0] != orders[1]   # set_epoch reshuffles


@needs_mpi
def test_ddp_on_one_process(tmp_path):
    """World size 1: the same trajectory as no DDP at all, with or without running the bucket path."""
    proc, _ = _mpiexec_job("one", tmp_path, n=1)
    assert proc.returncode == 0, proc.stderr[-5000:]
    res = _result(tmp_path)
    assert res["world"] == 1
    for case in ("plain", "synced"):
        assert res[case]["rel_diff_vs_single"] == 0.0 and res[case]["moved"] > 0.05


# ---- failures end the job -------------------------------------------------------------------------------------
@needs_mpi
@pytest.mark.parametrize("scenario", ["kill", "hang", "raise"])
def test_a_failed_rank_ends_the_job(tmp_path, scenario):
    """SIGKILL, a hang (the others time out after GRADFLOW_DIST_TIMEOUT) or an exception on rank 1: the job
    exits with an error, well before the test's timeout, never hangs."""
    proc, seconds = _mpiexec_job(scenario, tmp_path, GRADFLOW_DIST_TIMEOUT="4")
    assert proc.returncode != 0
    assert not os.path.exists(tmp_path / "result.json")
    assert seconds < 120
    if scenario == "hang":
        assert "did not finish within 4 s" in proc.stderr
        assert "uncaught exception on rank 0" in proc.stderr
    if scenario == "raise":
        assert "uncaught exception on rank 1" in proc.stderr and "rank 1 fails on purpose" in proc.stderr


@pytest.mark.gpu
@needs_mpi
def test_nccl_collectives_and_ddp(tmp_path):
    """NCCL through CuPy: two ranks on two GPUs, or a single-rank NCCL group on one."""
    n = min(2, gf.backend.cupy().cuda.runtime.getDeviceCount())
    proc, _ = _mpiexec_job("nccl", tmp_path, n=n)
    assert proc.returncode == 0, proc.stderr[-5000:]
    res = _result(tmp_path)
    assert res["backend"] == "nccl" and res["world"] == n
    assert res["sum"] and res["avg"] and res["broadcast"]
    assert res["all_gather"] == [[r, r + 0.5] for r in range(n)]
    assert res["ddp_rank_spread"] == 0.0 and res["ddp_rel_diff_vs_single"] < 2e-5


# ---- in this process: sampler, hooks, launcher --------------------------------------------------------------------
@pytest.mark.parametrize("n,replicas,drop_last", [(10, 3, False), (10, 3, True), (7, 4, False), (8, 2, False)])
def test_distributed_sampler_partition(n, replicas, drop_last):
    dataset = TensorDataset(numpy.arange(n))
    samplers = [DistributedSampler(dataset, num_replicas=replicas, rank=r, drop_last=drop_last, seed=4)
                for r in range(replicas)]
    for epoch in range(3):
        shares = []
        for s in samplers:
            s.set_epoch(epoch)
            shares.append(list(s))
        assert len({len(share) for share in shares}) == 1 and all(len(sh) == len(samplers[0]) for sh in shares)
        together = [i for share in shares for i in share]
        if drop_last:
            assert len(together) == n - n % replicas and len(set(together)) == len(together)
        else:
            assert set(together) == set(range(n))
            assert len(together) == -(-n // replicas) * replicas   # padded with repeats


def test_distributed_sampler_without_shuffle_interleaves():
    dataset = TensorDataset(numpy.arange(10))
    assert list(DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=False)) == [1, 3, 5, 7, 9]


def test_dataloader_with_a_sampler_yields_this_ranks_share():
    x = numpy.arange(20, dtype=numpy.float32).reshape(10, 2)
    dataset = TensorDataset(x, numpy.arange(10))
    sampler = DistributedSampler(dataset, num_replicas=2, rank=0, shuffle=True, seed=1)
    loader = DataLoader(dataset, batch_size=2, sampler=sampler)
    assert len(loader) == 3
    ids = [int(i) for _, y in loader for i in y.numpy()]
    assert ids == list(sampler)
    with pytest.raises(ValueError, match="mutually exclusive"):
        DataLoader(dataset, sampler=sampler, shuffle=True)
    with pytest.raises(ValueError, match="invalid rank"):
        DistributedSampler(dataset, num_replicas=2, rank=2)


def test_distributed_sampler_needs_a_group_or_explicit_rank():
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedSampler(TensorDataset(numpy.arange(4)))


def test_not_initialized_errors():
    with pytest.raises(RuntimeError, match="init_process_group"):
        gf.distributed.get_rank()
    with pytest.raises(RuntimeError, match="init_process_group"):
        nn.parallel.DistributedDataParallel(nn.Linear(2, 2))
    assert not gf.distributed.is_initialized()


def test_post_accumulate_grad_hook_fires_once_with_the_full_gradient():
    """A weight used twice gets both contributions before its hook runs, once per backward."""
    w = gf.tensor([1.0, 2.0], requires_grad=True)
    b = gf.tensor([0.5, 0.5], requires_grad=True)
    seen = []
    handle = w.register_post_accumulate_grad_hook(lambda t: seen.append(("w", t.grad.numpy().tolist())))
    b.register_post_accumulate_grad_hook(lambda t: seen.append(("b", t.grad.numpy().tolist())))
    x = gf.tensor([3.0, 4.0])
    ((w * x).sum() + (w * w).sum() + b.sum()).backward()
    assert sorted(seen) == [("b", [1.0, 1.0]), ("w", [3.0 + 2.0, 4.0 + 4.0])]
    seen.clear()
    gf.grad((w * x).sum(), [w])          # grad() does not touch .grad: no hook
    assert seen == []
    handle.remove()
    (w * x).sum().backward()
    assert seen == []
    with pytest.raises(RuntimeError, match="non-leaf"):
        (w * 2).register_post_accumulate_grad_hook(lambda t: None)


def test_queue_backward_callback_runs_after_every_gradient():
    tape = sys.modules["gradflow.tensor"]
    w = gf.tensor([1.0, 2.0], requires_grad=True)
    order = []

    def hook(t):
        order.append("hook")
        tape.queue_backward_callback(lambda: order.append(("end", w.grad.numpy().tolist())))
    w.register_post_accumulate_grad_hook(hook)
    (w * 3).sum().backward()
    assert order == ["hook", ("end", [3.0, 3.0])]
    with pytest.raises(RuntimeError, match="no backward pass"):
        tape.queue_backward_callback(lambda: None)


def test_launcher_command_line(tmp_path):
    command, env, dry = launcher.build_command(
        ["-n", "4", "--hostfile", "hosts.txt", "-ppn", "2", "--timeout", "60", "train.py", "--epochs", "3", "-n", "x"],
        environ={"PATH": os.environ.get("PATH", "")})
    assert os.path.basename(command[0]) in ("mpiexec", "mpirun")
    assert command[1:] == ["-n", "4", "--hostfile", "hosts.txt", "-ppn", "2", sys.executable, "train.py",
                           "--epochs", "3", "-n", "x"]
    assert env["OMP_NUM_THREADS"] == "1" and env["GRADFLOW_DIST_TIMEOUT"] == "60.0" and not dry
    command, env, _ = launcher.build_command(["-n", "2", "-m", "mypkg.train"], environ={"OMP_NUM_THREADS": "3"})
    assert command[-3:] == [sys.executable, "-m", "mypkg.train"] and env["OMP_NUM_THREADS"] == "3"
    with pytest.raises(SystemExit, match="-n N"):
        launcher.build_command(["train.py"])
    with pytest.raises(SystemExit, match="no script"):
        launcher.build_command(["-n", "2"])


def test_launcher_finds_the_environments_mpiexec():
    """The mpich wheel puts mpiexec next to this Python: found without PATH."""
    expected = os.path.join(sys.prefix, "bin", "mpiexec")
    if not os.path.exists(expected):
        pytest.skip("this environment has no mpiexec of its own")
    old = os.environ.pop("GRADFLOW_MPIEXEC", None)
    old_path = os.environ.get("PATH")
    os.environ["PATH"] = "/nonexistent"
    try:
        assert launcher.find_mpiexec() == expected
    finally:
        os.environ["PATH"] = old_path
        if old is not None:
            os.environ["GRADFLOW_MPIEXEC"] = old


@needs_mpi
def test_ddp_benchmark_job_reports_throughput_and_bandwidth():
    """One ``ddp`` case job of ``python -m benchmarks`` (2 processes, tiny timings): sane numbers."""
    command = [launcher.find_mpiexec(), "-n", "2", sys.executable, "-m", "benchmarks.ddp_bench", "--batch", "64",
               "--repeats", "2", "--min-time", "0.02", "--warmup", "2"]
    proc = subprocess.run(command, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=JOB_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["processes"] == 2 and res["per_process_batch"] == 32 and res["backend"] == "mpi"
    assert res["samples_per_s"] > 0 and len(res["step_times_s"]) == 2
    assert res["gradient_bytes"] == 4 * (784 * 128 + 128 + 128 * 32 + 32 + 32 * 10 + 10)
    assert res["allreduce_GBps"] > 0
