"""``python -m benchmarks``: gradflow against PyTorch eager and a hand-written NumPy loop,
on the CPU and (when CuPy finds a GPU) on the GPU. See benchmarks/README.md.
"""
import argparse
import os
import re
import socket
import sys
import time

DESCRIPTION = __doc__.splitlines()[0]


def parse_args(argv=None):
    from benchmarks.cases import CASES
    from benchmarks.worker import GROUPS
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=DESCRIPTION)
    p.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                   help="which backends to run: cpu, cuda, or all (the default: cpu, plus cuda when usable)")
    p.add_argument("--quick", action="store_true",
                   help="fewer batch sizes, repeats and ops; time to accuracy limited to one epoch "
                        "(under 2 minutes on a 2-core CPU)")
    p.add_argument("--cases", default=",".join(CASES),
                   help=f"comma-separated subset of: {', '.join(CASES)} (default: all)")
    p.add_argument("--out", default=None,
                   help="output directory for results.json and throughput.png "
                        "(default: benchmarks/results/<hostname>[-<gpu>])")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 7, quick 3)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for NumPy's BLAS and PyTorch alike (default: what NumPy's BLAS would "
                        "use: $OPENBLAS_NUM_THREADS/$OMP_NUM_THREADS, else every usable core)")
    p.add_argument("--quiet-wait", type=float, default=None, metavar="SECONDS",
                   help="before each measurement, wait up to this long for other processes to leave the "
                        "machine idle (default 20, quick 1; 0 disables)")
    p.add_argument("--batches", default=None, metavar="N,N,...",
                   help="batch sizes of the mlp and inference cases (default 32,128,512,2048,8192; quick 128,2048)")
    p.add_argument("--contestants", default=None, metavar="NAME,...",
                   help=f"comma-separated subset of: {', '.join(GROUPS)} (default: all; each runs in a process "
                        f"of its own)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    args = p.parse_args(argv)
    if args.contestants is not None:
        args.contestants = tuple(c.strip() for c in args.contestants.split(",") if c.strip())
        unknown = [c for c in args.contestants if c not in GROUPS]
        if unknown or not args.contestants:
            p.error(f"--contestants: unknown {', '.join(unknown) or 'empty list'}; choose from {', '.join(GROUPS)}")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    args.cases = cases
    if args.batches is not None:
        try:
            args.batches = tuple(int(b) for b in args.batches.split(",") if b.strip())
        except ValueError:
            p.error(f"--batches: expected comma-separated integers, got {args.batches!r}")
        if not args.batches or min(args.batches) < 1:
            p.error("--batches: give at least one batch size >= 1")
    return args


def default_out(devices, machine):
    base = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    name = machine.get("hostname") or socket.gethostname() or "local"
    if "cuda" in devices and machine.get("gpu"):
        name += "-" + machine["gpu"]
    return os.path.join(base, re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-").lower())


def main(argv=None):
    args = parse_args(argv)
    from benchmarks import cases, harness, report
    from benchmarks.suite import Suite
    from benchmarks.worker import GROUPS, Workers
    from gradflow import backend

    reporter = report.Reporter(progress=not args.no_progress)
    if args.device == "cpu":
        devices = ["cpu"]
    elif args.device == "cuda":
        if not backend.cuda_is_available():
            try:
                backend.cupy()
            except RuntimeError as e:
                print(f"--device cuda: {e}", file=sys.stderr)
            return 2
        devices = ["cuda"]
    else:
        devices = ["cpu"] + (["cuda"] if backend.cuda_is_available() else [])

    # one thread count for everyone, in the environment the workers start with
    threads = args.threads or harness.blas_threads()[0]
    harness.set_thread_env(threads)
    machine = harness.machine_info()
    cfg = cases.Config.make(quick=args.quick, repeats=args.repeats, devices=devices, threads=threads)
    if args.batches:
        cfg.mlp_batches = cfg.inference_batches = args.batches
    if args.quiet_wait is not None:
        cfg.quiet_wait = max(0.0, args.quiet_wait)
    out_dir = args.out or default_out(devices, machine)
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "results.json")
    png_path = os.path.join(out_dir, "throughput.png")
    command = ("python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])).strip()

    started = time.time()
    reporter.line(f"gradflow benchmarks  [{command}]")
    reporter.line(f"  machine: {machine['cpu_model']}, {machine['usable_cores']} usable cores"
                  + (f"; GPU {machine['gpu']} (CUDA driver {machine['cuda_driver']}, runtime "
                     f"{machine['cuda_runtime']}, CuPy {machine['cupy']})" if machine.get("gpu") else "; no GPU"))
    reporter.line(f"  numpy {machine['numpy']} ({machine['numpy_blas']}), torch {machine['torch']}, "
                  f"gradflow {machine['gradflow']} @ {machine['gradflow_commit']}"
                  + (" (+ uncommitted changes)" if machine["gradflow_tree_dirty"] else ""))
    if "cuda" not in devices and args.device == "all":
        reporter.note("no usable CUDA device (CuPy missing or no GPU): CPU backends only")

    records = []
    payload = {
        "meta": {"command": command, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
                 "quick": cfg.quick, "devices": devices, "cases": args.cases, "repeats": cfg.repeats,
                 "min_time_s": cfg.min_time, "ops_min_time_s": cfg.ops_min_time, "warmup_calls": cfg.warmup,
                 "seed": cfg.seed, "foreign_load_limit": harness.FOREIGN_LIMIT, "max_drift": cfg.max_drift, "quiet_wait_limit_s": cfg.quiet_wait,
                 "cooldown_s": cfg.cooldown, "threads": threads,
                 "hyperparameters": {"lr": cfg.lr, "momentum": cfg.momentum, "tta_lr": cfg.tta_lr,
                                     "tta_batch": cfg.tta_batch, "tta_target": cfg.tta_target,
                                     "tta_max_epochs": cfg.tta_max_epochs},
                 "machine": machine, "workers": {}},
        "records": records, "ratios": [], "targets": [], "notes": reporter.notes,
    }

    def save():
        payload["meta"]["elapsed_s"] = round(time.time() - started, 2)
        report.write_json(json_path, payload)

    with Workers(cfg, groups=args.contestants or tuple(GROUPS), cooldown=cfg.cooldown) as workers:
        payload["meta"]["workers"] = workers.info
        _describe_workers(reporter, workers.info, machine, cfg)
        suite = Suite(workers, cfg, reporter)
        for case in args.cases:
            case_start = time.time()
            if case == "mlp":
                records.append(suite.agreement(cases.SMALL))
                records.extend(suite.throughput("mlp", cases.SMALL, cfg.mlp_batches))
            elif case == "mlp_large":
                records.extend(suite.throughput("mlp_large", cases.LARGE, cfg.large_batches))
            elif case == "inference":
                records.extend(suite.throughput("inference", cases.SMALL, cfg.inference_batches, mode="infer"))
                records.extend(suite.throughput("inference", cases.LARGE, cfg.large_batches, mode="infer"))
            elif case == "ops":
                records.extend(suite.ops())
            elif case == "memory":
                records.extend(suite.memory())
            elif case == "tta":
                records.extend(suite.time_to_accuracy())
            elif case == "cnn":
                records.extend(suite.throughput("cnn", cases.CNN, cfg.cnn_batches))
            elif case == "ddp":
                records.extend(suite.ddp())
            payload["ratios"] = report.compute_ratios(_good(records))
            report.print_ratios(reporter, payload["ratios"], case)
            payload["meta"].setdefault("case_seconds", {})[case] = round(time.time() - case_start, 1)
            reporter.line(f"  ({case}: {time.time() - case_start:.0f} s)")
            payload["meta"]["quiet_wait_s"] = round(suite.waited, 1)
            payload["meta"]["started_busy"] = suite.busy_waits
            payload["meta"]["redone_for_drift"] = suite.redone
            save()
        if suite.busy_waits:
            reporter.note(f"{suite.busy_waits} measurement(s) started while other processes kept the machine busy "
                          f"(waited up to {cfg.quiet_wait:g} s each); rows marked '*' are contended")

    payload["targets"] = report.compute_targets(_good(records), cfg.mlp_batches, cfg.large_batches)
    report.print_targets(reporter, payload["targets"])
    title = (f"{machine['cpu_model']} ({machine['usable_cores']} cores, {threads} threads)"
             + (f" + {machine['gpu']}" if machine.get("gpu") and "cuda" in devices else ""))
    why = report.plot(png_path, _good(records), title=title)
    if why:
        reporter.note(f"plot skipped: {why}")
    payload["plot"] = None if why else os.path.basename(png_path)
    save()
    reporter.line("")
    reporter.line(f"wrote {json_path}" + ("" if why else f" and {png_path}") + f" in {time.time() - started:.0f} s")
    return 0


def _good(records):
    return [r for r in records if "error" not in r and r.get("case") != "agreement"]


def _describe_workers(reporter, info, machine, cfg):
    from benchmarks.worker import TORCH_GROUPS
    for group, w in info.items():
        t = w["threads"]
        torch_part = f", torch threads {t.get('torch_threads')}" if group in TORCH_GROUPS else ""
        reporter.line(f"  {group} worker: {', '.join(w['available']) or 'nothing to run'}; BLAS threads "
                      f"{t['blas_threads']} ({t['blas_threads_source']}){torch_part}")
        if group in TORCH_GROUPS and w.get("torch"):
            machine["torch"], machine["torch_cuda"] = w["torch"], w.get("torch_cuda")
        for label, why in w["skipped"].items():
            reporter.note(f"{label} skipped: {why}")
    reporter.line(f"  {'quick' if cfg.quick else 'full'} mode: {cfg.repeats} repeats of >= {cfg.min_time:g} s "
                  f"each, {cfg.warmup} warm-up calls, devices: {', '.join(cfg.devices)}")


if __name__ == "__main__":
    sys.exit(main())
