"""The rank side of tests/test_distributed.py: run under ``mpiexec -n 2 python tests/distributed_worker.py
SCENARIO OUT_DIR``. Rank 0 writes what it measured to OUT_DIR/result.json; the test asserts on it.

Each rank trains a DistributedDataParallel model on its half of every batch and, next to
it, a plain model on the whole batch (the single-process reference) from the same
initial weights, so both trajectories are in the same process and can be compared step
by step.
"""
import json
import os
import signal
import sys
import time
import warnings

import numpy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gradflow as gf  # noqa: E402
import gradflow.distributed as dist  # noqa: E402
from gradflow import nn, optim  # noqa: E402
from gradflow.data import DataLoader, DistributedSampler, TensorDataset  # noqa: E402
from gradflow.nn.parallel import DistributedDataParallel as DDP  # noqa: E402
from gradflow.train import ModelCheckpoint, fit  # noqa: E402

SIZES = [20, 32, 16, 5]


def data(n=64, seed=7):
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal((n, SIZES[0])).astype(numpy.float32)
    y = rng.integers(0, SIZES[-1], n).astype(numpy.int64)
    return x, y


def flat_params(model):
    return numpy.concatenate([p.numpy().ravel() for p in model.parameters()])


def gather(array):
    """Every rank's copy of ``array`` (to check the replicas agree)."""
    out = [gf.zeros(array.shape, dtype=array.dtype) for _ in range(dist.get_world_size())]
    dist.all_gather(out, gf.tensor(array))
    return [o.numpy() for o in out]


def max_rank_spread(array):
    if not numpy.isfinite(array).all():
        return float("inf")
    copies = gather(array)
    return float(max(numpy.abs(c - copies[0]).max() for c in copies))


def rel_diff(a, b):
    if not (numpy.isfinite(a).all() and numpy.isfinite(b).all()):
        return float("inf")
    return float(numpy.abs(a - b).max() / max(numpy.abs(b).max(), 1e-12))


def make_optimizer(name, params):
    if name == "sgd":
        return optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    return optim.Adam(params, lr=0.01)


def train_vs_reference(opt_name, steps=6, batch=16, bucket_cap_mb=0.001):
    """DDP on halves vs one model on the whole batch; and replicas identical after every step."""
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = data(steps * batch)
    gf.manual_seed(100 + rank)  # every rank initialises differently: DDP must broadcast rank 0's weights
    model = nn.MLP(SIZES)
    ddp = DDP(model, bucket_cap_mb=bucket_cap_mb)
    reference = nn.MLP(SIZES)
    reference.load_state_dict(model.state_dict())  # after the broadcast: rank 0's weights
    initial = flat_params(reference)
    opt, ref_opt = make_optimizer(opt_name, ddp.parameters()), make_optimizer(opt_name, reference.parameters())
    loss_fn = nn.CrossEntropyLoss()
    worst_spread, worst_rel, n_buckets = 0.0, 0.0, len(ddp.bucket_sizes)
    share = batch // world
    for step in range(steps):
        xb, yb = x[step * batch:(step + 1) * batch], y[step * batch:(step + 1) * batch]
        mine = slice(rank * share, (rank + 1) * share)
        opt.zero_grad()
        loss_fn(ddp(gf.tensor(xb[mine])), gf.tensor(yb[mine])).backward()
        opt.step()
        ref_opt.zero_grad()
        loss_fn(reference(gf.tensor(xb)), gf.tensor(yb)).backward()
        ref_opt.step()
        worst_spread = max(worst_spread, max_rank_spread(flat_params(model)))
        worst_rel = max(worst_rel, rel_diff(flat_params(model), flat_params(reference)))
    return {"rank_spread": worst_spread, "rel_diff_vs_single": worst_rel, "buckets": n_buckets,
            "moved": rel_diff(flat_params(reference), initial)}


def no_sync_accumulation():
    """Two micro-batches, the first under no_sync: equals one process accumulating both full micro-batches."""
    rank, world = dist.get_rank(), dist.get_world_size()
    x, y = data(96)
    gf.manual_seed(5)
    model = nn.MLP(SIZES)
    ddp = DDP(model, bucket_cap_mb=0.001)
    reference = nn.MLP(SIZES)
    reference.load_state_dict(model.state_dict())
    opt, ref_opt = optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9), optim.SGD(reference.parameters(), lr=0.1,
                                                                                   momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    unsynced_spread, worst_rel = 0.0, 0.0
    for step in range(3):
        opt.zero_grad()
        ref_opt.zero_grad()
        for micro in range(2):
            start = (2 * step + micro) * 16
            xb, yb = x[start:start + 16], y[start:start + 16]
            mine = slice(rank * 8, (rank + 1) * 8)
            if micro == 0:
                with ddp.no_sync():
                    loss_fn(ddp(gf.tensor(xb[mine])), gf.tensor(yb[mine])).backward()
                grads = numpy.concatenate([p.grad.numpy().ravel() for p in model.parameters()])
                unsynced_spread = max(unsynced_spread, max_rank_spread(grads))
            else:
                loss_fn(ddp(gf.tensor(xb[mine])), gf.tensor(yb[mine])).backward()
            loss_fn(reference(gf.tensor(xb)), gf.tensor(yb)).backward()
        opt.step()
        ref_opt.step()
        worst_rel = max(worst_rel, rel_diff(flat_params(model), flat_params(reference)))
    return {"unsynced_grad_spread": unsynced_spread, "rel_diff_vs_single": worst_rel,
            "rank_spread": max_rank_spread(flat_params(model))}


def unused_parameters():
    """find_unused_parameters: a branch only rank 1 uses gets rank 1's gradient / 2 everywhere; one no rank
    uses keeps grad None."""
    rank = dist.get_rank()

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.never = nn.Linear(4, 2), nn.Linear(4, 2), nn.Linear(4, 2)

        def forward(self, x, use_b):
            out = self.a(x)
            return out + self.b(x) if use_b else out

    gf.manual_seed(3)
    model = Branchy()
    ddp = DDP(model, find_unused_parameters=True)
    x = gf.ones((3, 4))
    ddp(x, use_b=(rank == 1)).sum().backward()
    b_grad = model.b.weight.grad.numpy()
    ok_b = numpy.allclose(b_grad, numpy.full((2, 4), 3.0 / 2))
    result = {"b_grad_half_of_rank1": bool(ok_b), "never_grad_is_none": model.never.weight.grad is None}
    strict = DDP(Branchy())
    try:
        strict(x, use_b=True).sum().backward()  # 'never' gets no gradient on any rank: an error, on every rank
        result["strict_error"] = None
    except RuntimeError as e:
        result["strict_error"] = str(e)
    return result


def compiled_vs_eager(steps=6):
    """The same DDP training step eager and through gradflow.compile (replayed after two recordings)."""
    from gradflow.train import training_step
    rank = dist.get_rank()
    x, y = data(steps * 16)
    finals, captured = [], None
    for use_compile in (False, True):
        gf.manual_seed(21)
        ddp = DDP(nn.MLP(SIZES), bucket_cap_mb=0.001)
        opt = optim.Adam(ddp.parameters(), lr=0.01)
        step = training_step(ddp, nn.CrossEntropyLoss(), opt)
        if use_compile:
            step = gf.compile(step, strict=True)
        for i in range(steps):
            rows = slice(i * 16 + rank * 8, i * 16 + rank * 8 + 8)
            step(gf.tensor(x[rows]), gf.tensor(y[rows]))
        if use_compile:
            captured = step.captured
        finals.append(flat_params(ddp))
    return {"captured": captured, "rel_diff": rel_diff(finals[1], finals[0]), "rank_spread": max_rank_spread(finals[1])}


def fit_run(compile_step, epochs, resume=None, checkpoint=None, seed=11):
    rank = dist.get_rank()
    x, y = data(60)
    dataset = TensorDataset(x, y)
    sampler = DistributedSampler(dataset, shuffle=True, seed=3)
    loader = DataLoader(dataset, batch_size=8, sampler=sampler)
    gf.manual_seed(seed + rank)
    ddp = DDP(nn.MLP(SIZES))
    opt = optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    callbacks = [ModelCheckpoint(checkpoint)] if checkpoint else []
    history = fit(ddp, nn.CrossEntropyLoss(), opt, loader, val_loader=DataLoader(dataset, batch_size=30),
                  epochs=epochs, progress=False, compile=compile_step, callbacks=callbacks, resume=resume)
    return ddp, history


def fit_checks(out_dir):
    rank = dist.get_rank()
    saves = []
    original_save = gf.serialization.save

    def counting_save(obj, path):
        saves.append(path)
        return original_save(obj, path)
    gf.serialization.save = counting_save
    import gradflow.train as train_module
    train_module.serialization.save = counting_save
    try:
        eager, history = fit_run(False, 3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compiled, _ = fit_run(True, 3)
        path = os.path.join(out_dir, "ckpt.npz")
        fit_run(False, 2, checkpoint=path)
        dist.barrier()
        resumed, resumed_history = fit_run(False, 3, resume=path)
    finally:
        gf.serialization.save = original_save
        train_module.serialization.save = original_save
    histories = [None] * dist.get_world_size()
    dist.all_gather_object(histories, history.history["loss"] + history.history["val_accuracy"])
    saved_by = [None] * dist.get_world_size()
    dist.all_gather_object(saved_by, len(saves))
    return {
        "compile_vs_eager": rel_diff(flat_params(compiled), flat_params(eager)),
        "compile_warnings": [str(w.message) for w in caught],
        "eager_rank_spread": max_rank_spread(flat_params(eager)),
        "histories_equal": all(h == histories[0] for h in histories),
        "saves_per_rank": saved_by,
        "resume_vs_uninterrupted": rel_diff(flat_params(resumed), flat_params(eager)),
        "resumed_epochs": resumed_history.epochs,
        "loss_history": history.history["loss"],
    }


def sampler_coverage():
    """The ranks' shares of one epoch, gathered: together each index exactly once (per epoch, 2 epochs)."""
    out = {}
    for n, drop_last in ((10, False), (11, False), (11, True)):
        dataset = TensorDataset(numpy.arange(n))
        sampler = DistributedSampler(dataset, drop_last=drop_last)
        epochs = []
        for epoch in range(2):
            sampler.set_epoch(epoch)
            shares = [None] * dist.get_world_size()
            dist.all_gather_object(shares, list(sampler))
            epochs.append(shares)
        out[f"{n}-{drop_last}"] = epochs
    return out


def collectives():
    rank, world = dist.get_rank(), dist.get_world_size()
    res = {}
    for op, expect in ((dist.ReduceOp.SUM, 3.0), (dist.ReduceOp.AVG, 1.5), (dist.ReduceOp.MAX, 2.0),
                       (dist.ReduceOp.MIN, 1.0), (dist.ReduceOp.PRODUCT, 2.0)):
        t = gf.full((2, 3), float(rank + 1))
        dist.all_reduce(t, op)
        res[op.name] = bool((t.numpy() == expect).all())
    t = gf.full((3,), float(rank))
    dist.broadcast(t, src=1)
    res["broadcast"] = t.numpy().tolist()
    out = [gf.zeros(2, dtype=gf.int64) for _ in range(world)]
    dist.all_gather(out, gf.tensor([rank, 10 * rank]))
    res["all_gather"] = [o.numpy().tolist() for o in out]
    work = dist.all_reduce(gf.ones(4), async_op=True)
    res["async"] = work.wait(timeout=30)
    dist.barrier()
    return res


def mismatch():
    rank = dist.get_rank()
    try:
        DDP(nn.MLP([20, 32 if rank == 0 else 24, 5]))
        return None
    except RuntimeError as e:
        return str(e)


def nccl_checks():
    """GPU tensors through NCCL (one GPU per rank; a single-rank group on a one-GPU machine)."""
    import cupy
    rank, world = dist.get_rank(), dist.get_world_size()
    res = {"backend": dist.get_backend(), "device": cupy.cuda.Device().id}
    t = gf.full((1000,), float(rank + 1), device="cuda")
    dist.all_reduce(t)
    res["sum"] = bool((t.numpy() == world * (world + 1) / 2).all())
    t = gf.full((7,), float(rank + 1), device="cuda")
    dist.all_reduce(t, dist.ReduceOp.AVG)
    res["avg"] = bool(numpy.allclose(t.numpy(), (world + 1) / 2))
    t = gf.full((3,), float(rank), device="cuda")
    dist.broadcast(t, src=world - 1)
    res["broadcast"] = bool((t.numpy() == world - 1).all())
    out = [gf.zeros(2, device="cuda") for _ in range(world)]
    dist.all_gather(out, gf.tensor([rank, rank + 0.5], device="cuda"))
    res["all_gather"] = [o.numpy().tolist() for o in out]
    # DDP on the GPU against one process on the whole batch (the bucket path even with one process)
    DDP.sync_one_process = True
    x, y = data(64)
    gf.manual_seed(100 + rank)
    model = nn.MLP(SIZES, device="cuda")
    ddp = DDP(model, bucket_cap_mb=0.001)
    reference = nn.MLP(SIZES, device="cuda")
    reference.load_state_dict(model.state_dict())
    opt, ref_opt = make_optimizer("sgd", ddp.parameters()), make_optimizer("sgd", reference.parameters())
    loss_fn = nn.CrossEntropyLoss()
    worst = 0.0
    share = 16 // world
    for step in range(4):
        xb, yb = x[step * 16:(step + 1) * 16], y[step * 16:(step + 1) * 16]
        mine = slice(rank * share, (rank + 1) * share)
        opt.zero_grad()
        loss_fn(ddp(gf.tensor(xb[mine], device="cuda")), gf.tensor(yb[mine], device="cuda")).backward()
        opt.step()
        ref_opt.zero_grad()
        loss_fn(reference(gf.tensor(xb, device="cuda")), gf.tensor(yb, device="cuda")).backward()
        ref_opt.step()
        worst = max(worst, rel_diff(flat_params(model), flat_params(reference)))
    res["ddp_rel_diff_vs_single"] = worst
    res["ddp_rank_spread"] = max_rank_spread(flat_params(model))
    return res


def main():
    scenario, out_dir = sys.argv[1], sys.argv[2]
    dist.init_process_group("nccl" if scenario == "nccl" else "mpi")
    rank = dist.get_rank()
    if scenario == "nccl":
        result = {"world": dist.get_world_size(), **nccl_checks()}
    elif scenario == "one":  # one process: DDP is a no-op, or (sync_one_process) runs its buckets over one rank
        result = {"world": dist.get_world_size(), "plain": train_vs_reference("adam")}
        DDP.sync_one_process = True
        result["synced"] = train_vs_reference("adam")
    elif scenario == "main":
        result = {"world": dist.get_world_size(), "collectives": collectives(),
                  "sgd": train_vs_reference("sgd"), "adam": train_vs_reference("adam"),
                  "one_bucket": train_vs_reference("sgd", bucket_cap_mb=25),
                  "no_sync": no_sync_accumulation(), "compile": compiled_vs_eager(), "unused": unused_parameters(),
                  "sampler": sampler_coverage(), "fit": fit_checks(out_dir), "mismatch": mismatch()}
    elif scenario in ("kill", "hang", "raise"):
        gf.manual_seed(0)
        ddp = DDP(nn.MLP(SIZES))
        opt = optim.SGD(ddp.parameters(), lr=0.1)
        x, y = data()
        for step in range(100):
            if step == 3 and rank == 1:
                if scenario == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                elif scenario == "hang":
                    time.sleep(600)
                else:
                    raise ValueError("rank 1 fails on purpose")
            opt.zero_grad()
            nn.CrossEntropyLoss()(ddp(gf.tensor(x[:8])), gf.tensor(y[:8])).backward()
            opt.step()
        result = {"finished": True}
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    if rank == 0:
        with open(os.path.join(out_dir, "result.json"), "w") as f:
            json.dump(result, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
