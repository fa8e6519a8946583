"""The parent side of a run: send each case's jobs to the workers, print rows as results
arrive, and collect the records. (The measurements themselves are in cases.py.)
"""
from benchmarks import cases, harness, ops_bench
from benchmarks.report import fmt_bytes, fmt_rate, fmt_time, spread

THROUGHPUT_COLUMNS = (["model", "contestant", "batch", "median/step", "IQR", "min..max", "samples/s", "first call",
                       ""], [21, 22, 6, 11, 7, 19, 10, 11, 1])
OPS_COLUMNS = (["op", "shape", "contestant", "median", "IQR", "min..max", "first call", "launches", ""],
               [11, 23, 22, 10, 7, 19, 11, 8, 1])
MEMORY_COLUMNS = (["model", "contestant", "batch", "peak", "before", "meter", "params+grads+mom",
                   "layer outputs"], [21, 22, 6, 10, 10, 20, 16, 13])
DDP_COLUMNS = (["model", "device", "processes", "batch", "median/step", "samples/s", "scaling", "all-reduce",
                "bandwidth"], [21, 7, 10, 6, 11, 11, 8, 11, 12])
TTA_COLUMNS = (["model", "contestant", "reached", "wall time", "train time", "epochs", "test acc", "runs",
                "min..max", ""], [21, 22, 8, 10, 10, 7, 8, 5, 19, 1])


class Suite:
    def __init__(self, workers, cfg, reporter):
        self.workers, self.cfg, self.reporter = workers, cfg, reporter
        self.groups = list(workers.active)   # the workers with a contestant to run
        self.waited = 0.0       # seconds spent waiting for a quiet machine
        self.busy_waits = 0     # measurements that started on a machine still busy after the wait
        self.redone = 0         # measurements redone because the machine's speed drifted

    def _run(self, job, **kwargs):
        """Run a job on every worker in turn; yield each result, its notes reported."""
        for group in self.groups:
            try:
                result = self.workers.call(group, job, **kwargs)
            except Exception as e:
                self.reporter.note(f"{job} {kwargs} failed in the {group} worker: {str(e).splitlines()[0]}")
                continue
            self._notes(result)
            yield result

    def _records(self, job, **kwargs):
        out = []
        for result in self._run(job, **kwargs):
            out.extend(result.get("records", []))
        return out

    def _timed(self, kind, **kwargs):
        """One timed measurement over all workers, redone (up to ``cfg.attempts`` times in all)
        when the machine's own speed drifted meanwhile; the last attempt's records are kept,
        marked with their drift."""
        for attempt in range(1, self.cfg.attempts + 1):
            records, drift = self._timed_once(kind, **kwargs)
            if drift <= self.cfg.max_drift:
                break
            what = " ".join(f"{k}={v}" for k, v in kwargs.items() if k != "sizes")
            if attempt < self.cfg.attempts:
                self.reporter.note(f"{kind} {what}: the machine slowed by {drift:.2f}x during the measurement "
                                   f"(canary); measuring again")
                self.redone += 1
            else:
                self.reporter.note(f"{kind} {what}: the machine slowed by {drift:.2f}x during the measurement "
                                   f"(canary), in every attempt; rows marked '~'")
        return records

    def _timed_once(self, kind, **kwargs):
        """Set up (and prepare) in each worker, then the repeats round by round, alternating
        the worker order (A B, B A, ...) so the pause between workers is needed once a round,
        then collect the records. Returns (records, the worst canary drift)."""
        self.quiet()
        groups = []
        for group in self.groups:
            try:
                result = self.workers.call(group, "setup", kind=kind, **kwargs)
                groups.append(group)
            except Exception as e:
                self.reporter.note(f"{kind} {kwargs} could not be set up in the {group} worker: "
                                   f"{str(e).splitlines()[0]}")
                continue
            self._notes(result)
        # the planned rounds, then (up to twice as many again) more while some runner has fewer
        # clean repeats than planned -- repeats that other processes disturbed are set aside --
        # or its timings are still unsettled (IQR above max_spread of the median)
        wanted = self.cfg.repeats
        for r in range(3 * wanted if self.cfg.extra_rounds else wanted):
            clean, spread, drift = [], 0.0, 1.0
            for group in (groups if r % 2 == 0 else groups[::-1]):
                result = self.workers.call(group, "repeat")
                self._notes(result)
                if result.get("clean") is not None:
                    clean.append(result["clean"])
                spread = max(spread, result.get("spread") or 0.0)
                drift = max(drift, result.get("drift") or 1.0)
            if r + 1 >= wanted and min(clean, default=wanted) >= wanted and spread <= self.cfg.max_spread:
                break
            if r + 1 >= wanted and drift > self.cfg.max_drift and self.cfg.attempts > 1:
                break   # the machine itself drifted: more rounds will not settle it, measure again
        records = []
        for group in groups:
            result = self.workers.call(group, "finish")
            self._notes(result)
            records.extend(result["records"])
        return records, max((r.get("drift", 1.0) for r in records), default=1.0)

    def quiet(self):
        """Before a measurement: wait (bounded) until other processes leave the machine idle."""
        if self.cfg.quiet_wait <= 0:
            return
        waited = harness.wait_for_quiet(self.cfg.quiet_wait)
        self.waited += waited
        if waited >= self.cfg.quiet_wait:
            self.busy_waits += 1

    def _notes(self, result):
        for n in result.get("notes", []):
            self.reporter.note(n)

    def labels(self):
        return [label for info in self.workers.info.values() for label in info["available"]]

    # ---- cases ------------------------------------------------------------------------------------------------------
    def agreement(self, sizes, batch=128, steps=3):
        """Same weights, same batches: every contestant's losses over a few steps must match."""
        losses, source = {}, None
        for result in self._run("agreement", sizes=sizes, batch=batch, steps=steps):
            losses.update(result["losses"])
            source = result.get("init", source)
        ref = losses.get("numpy-loop/cpu") or next(iter(losses.values()), None)
        worst = max((abs(a - b) / max(abs(b), 1e-12) for ls in losses.values() for a, b in zip(ls, ref)),
                    default=0.0) if ref else None
        ok = worst is not None and worst < 1e-3
        if worst is None:
            self.reporter.line("  same-weights check: nothing ran")
        else:
            text = ", ".join(f"{k} {v[-1]:.5f}" for k, v in losses.items())
            self.reporter.line(f"  same-weights check, loss after {steps} steps at batch {batch}: {text}; "
                               f"max relative difference {worst:.1e} -> {'OK' if ok else 'MISMATCH'}")
            if not ok:
                self.reporter.note("contestants disagree on the loss from the same weights and data: "
                                   "the comparison is suspect")
        return {"case": "agreement", "model": cases.model_name(sizes), "batch": batch, "steps": steps,
                "losses": losses, "max_relative_difference": worst, "ok": ok, "init": source}

    def throughput(self, case, sizes, batches, mode="train"):
        title = {"mlp": "MLP training throughput", "mlp_large": "large MLP training throughput (matmul-bound)",
                 "inference": "inference throughput", "cnn": "MNIST CNN training throughput"}[case]
        name = sizes if case == "cnn" else cases.model_name(sizes)
        self.reporter.header(f"{title}: {name}", *THROUGHPUT_COLUMNS)
        records = []
        with self.reporter.progress(len(batches), f"{case} {name}") as bar:
            for batch in batches:
                for rec in self._timed("throughput", case=case, sizes=sizes, batch=batch, mode=mode):
                    records.append(rec)
                    self._throughput_row(rec)
                bar.update(1)
        return records

    def _throughput_row(self, rec):
        if "error" in rec:
            self.reporter.row([rec["model"], rec["label"], rec["batch"], "failed"], THROUGHPUT_COLUMNS[1])
            return
        t = rec["timing"]
        iqr, minmax = spread(t)
        self.reporter.row([rec["model"], rec["label"], rec["batch"], fmt_time(t["median_s"]), iqr, minmax,
                           fmt_rate(rec["value"]), fmt_time(t["first_call_s"]), _flags(rec)],
                          THROUGHPUT_COLUMNS[1])

    def ops(self):
        self.reporter.header("op microbenchmarks (time per call)", *OPS_COLUMNS)
        specs = ops_bench.op_specs(self.cfg.quick)
        records = []
        with self.reporter.progress(len(specs), "ops") as bar:
            for index, spec in enumerate(specs):
                for rec in self._timed("op", index=index):
                    records.append(rec)
                    if "error" in rec:
                        self.reporter.row([rec["op"], rec["shape"], rec["label"], "failed"], OPS_COLUMNS[1], left=3)
                        continue
                    t = rec["timing"]
                    iqr, minmax = spread(t)
                    self.reporter.row([spec.op, spec.shape, rec["label"], fmt_time(t["median_s"]), iqr, minmax,
                                       fmt_time(t["first_call_s"]),
                                       "-" if rec["launches"] is None else rec["launches"], _flags(rec)],
                                      OPS_COLUMNS[1], left=3)
                bar.update(1)
        return records

    def memory(self):
        self.reporter.header("memory held at the peak of a training step", *MEMORY_COLUMNS)
        records = []
        for sizes, batch in self.cfg.memory_plan:
            for rec in self._records("memory", sizes=sizes, batch=batch):
                records.append(rec)
                self.reporter.row([rec["model"], rec["label"], batch, fmt_bytes(rec["peak_bytes"]),
                                   fmt_bytes(rec["before_bytes"]), rec["meter"], fmt_bytes(rec["state_bytes"]),
                                   fmt_bytes(rec["layer_output_bytes"])], MEMORY_COLUMNS[1], left=2)
        self.reporter.line("  (peak: parameters, gradients, optimizer state and activations live at the step's peak; "
                           "before: the same just before the step. params+grads+momentum and layer outputs are "
                           "the float32 minimum, for scale. tracemalloc sees NumPy buffers and Python objects; "
                           "the torch profiler sees its allocator op by op.)")
        return records

    def ddp(self):
        """DistributedDataParallel throughput with 1 and 2 processes (one BLAS thread each) at the same global
        batch, the scaling efficiency (2-process / (2 x 1-process) throughput) and the bandwidth of the
        gradient buckets' all-reduce. GPU rows need as many GPUs as processes (NCCL, one per process)."""
        cfg = self.cfg
        model = cases.model_name(cases.SMALL)
        self.reporter.header(f"DistributedDataParallel training throughput: {model}, global batch split over "
                             f"the processes", *DDP_COLUMNS)
        try:
            from gradflow.distributed.run import find_mpiexec
            find_mpiexec()
            import mpi4py  # noqa: F401
        except (ImportError, FileNotFoundError) as e:
            self.reporter.note(f"ddp skipped: {e}")
            return []
        records = []
        for device in cfg.devices:
            gpus = None
            if device == "cuda":
                from gradflow import backend
                gpus = backend.cupy().cuda.runtime.getDeviceCount()
            for batch in cfg.ddp_batches:
                base = None
                for n in cfg.ddp_processes:
                    if gpus is not None and n > gpus:
                        self.reporter.note(f"ddp cuda with {n} processes skipped: {gpus} GPU(s), NCCL needs one "
                                           f"per process")
                        continue
                    self.quiet()
                    try:
                        result = _ddp_job(cfg, device, n, batch)
                    except Exception as e:
                        self.reporter.note(f"ddp {device} {n} processes batch {batch} failed: {e}")
                        continue
                    rate = result["samples_per_s"]
                    if n == 1:
                        base = rate
                    efficiency = rate / (n * base) if base and n > 1 else None
                    rec = {"case": "ddp", "model": model, "contestant": f"gradflow-ddp-{n}p", "device": device,
                           "label": f"gradflow-ddp-{n}p/{device}", "batch": batch, "processes": n,
                           "unit": "samples/s", "value": rate, "scaling_efficiency": efficiency, **result}
                    records.append(rec)
                    self.reporter.row([model, device, n, batch, fmt_time(result["median_s"]), fmt_rate(rate),
                                       "-" if efficiency is None else f"{efficiency:.2f}",
                                       fmt_time(result["allreduce_median_s"]),
                                       "-" if n == 1 else f"{result['allreduce_GBps']:.2f} GB/s"],
                                      DDP_COLUMNS[1], left=4)
        self.reporter.line("  (scaling: N-process throughput / (N x 1-process throughput) at the same global batch; "
                           "all-reduce: the gradient buckets alone, bandwidth = gradient bytes / time. Processes "
                           "share this machine's cores with each other and with anything else running.)")
        return records

    def time_to_accuracy(self):
        cfg = self.cfg
        self.reporter.header(f"time to {cfg.tta_target:.0%} MNIST test accuracy (784-128-32-10, batch "
                             f"{cfg.tta_batch}, SGD lr {cfg.tta_lr} momentum {cfg.momentum})", *TTA_COLUMNS)
        if cfg.quick:
            self.reporter.note(f"quick mode: time to accuracy is limited to {cfg.tta_max_epochs:g} epoch(s); "
                               f"'reached' says whether {cfg.tta_target:.0%} was reached within it")
        runs = {}
        jobs = [(group, label) for group in self.groups for label in self.workers.info[group]["available"]]
        with self.reporter.progress(len(jobs) * cfg.tta_repeats, "tta") as bar:
            for r in range(cfg.tta_repeats):   # round-robin, so machine noise spreads over everyone
                for group, label in (jobs if r % 2 == 0 else jobs[::-1]):
                    self.quiet()
                    try:
                        result = self.workers.call(group, "tta", label=label)
                        runs.setdefault(label, []).extend(result["records"])
                    except Exception as e:
                        self.reporter.note(f"tta {label} failed: {str(e).splitlines()[0]}")
                    bar.update(1)
        records = []
        for group, label in jobs:
            if label not in runs:
                continue
            rec = _merge_tta_runs(runs[label])
            records.append(rec)
            self.reporter.row([rec["model"], label, "yes" if rec["reached"] else "no",
                               fmt_time(rec["time_s"]) if rec["reached"] else "-", fmt_time(rec["train_s"]),
                               f"{rec['epochs']:.2f}", f"{rec['accuracy']:.4f}",
                               f"{rec['used_runs']}/{len(rec['runs'])}", _spread_text(rec),
                               "* contended" if rec["contended"] else ""], TTA_COLUMNS[1])
        return records


def _ddp_job(cfg, device, processes, batch):
    """One ``mpiexec -n processes`` run of benchmarks/ddp_bench.py; its JSON line."""
    import json
    import os
    import subprocess
    import sys
    from gradflow.distributed.run import find_mpiexec
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for var in harness.THREAD_ENV:
        env[var] = "1"   # one BLAS thread per process: N processes on N cores
    command = [find_mpiexec(), "-n", str(processes), sys.executable, "-m", "benchmarks.ddp_bench", "--batch",
               str(batch), "--device", device, "--repeats", str(cfg.repeats), "--min-time", str(cfg.min_time),
               "--warmup", str(cfg.warmup), "--seed", str(cfg.seed)]
    proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _flags(rec):
    """Marks after a row: '*' contended (other processes were busy in most repeats; all counted),
    '(n set aside)' disturbed repeats left out, 'eager' a captured step that was not captured."""
    t = rec.get("timing", {})
    marks = []
    if rec.get("drift", 1.0) > cases.Config.max_drift:
        marks.append(f"~ drift {rec['drift']:.2f}x")
    if t.get("contended"):
        marks.append("* contended")
    elif t.get("used") and not all(t["used"]):
        marks.append(f"({len(t['used']) - sum(t['used'])} set aside)")
    if rec.get("captured") is False:
        marks.append("eager")
    return " ".join(marks)


def _merge_tta_runs(runs):
    """One record from repeated runs: the median wall time, every run kept under 'runs'."""
    import statistics
    from benchmarks.harness import FOREIGN_LIMIT
    rec = dict(runs[0])
    rec["runs"] = [{k: r[k] for k in ("time_s", "train_s", "epochs", "accuracy", "reached", "foreign", "curve")}
                   for r in runs]
    clean = [r for r in runs if r.get("foreign") is None or r["foreign"] <= FOREIGN_LIMIT]
    rec["contended"] = not clean
    use = clean or runs             # runs that other processes disturbed are set aside when others exist
    rec["used_runs"] = len(use)
    rec["reached"] = all(r["reached"] for r in use)
    rec["time_s"] = rec["value"] = statistics.median(r["time_s"] for r in use) if rec["reached"] else None
    rec["train_s"] = statistics.median(r["train_s"] for r in use)
    rec["epochs"] = statistics.median(r["epochs"] for r in use)
    rec["accuracy"] = statistics.median(r["accuracy"] for r in use)
    rec.pop("curve", None)
    rec.pop("foreign", None)
    return rec


def _spread_text(rec):
    times = [r["time_s"] for r in rec["runs"] if r["time_s"] is not None]
    if len(times) < 2:
        return "-"
    return f"{fmt_time(min(times))}..{fmt_time(max(times))}"
