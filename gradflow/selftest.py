"""``python -m gradflow.selftest --device cuda``: one command that proves (or disproves) the GPU path.

On a machine with an NVIDIA GPU it runs, each check in its own process with a time limit
(so a hang costs that check, not the run), inside one overall budget (default 450 s):

- environment: device name, compute capability, driver, CUDA runtime, NVRTC, CuPy, PyTorch
  and gradflow versions;
- pytest -m gpu: every GPU test, including the core op/gradient/optimizer tests
  parametrized over cuda; reported as four lines: the core tests, every kernel against its
  NumPy twin, the dropout/noisy-ReLU masks bit for bit against the CPU, the capturable GEMM;
- compile-replay: ``gradflow.compile`` replay (CUDA graphs) against eager over 100 steps,
  within float32 tolerances stated in the report;
- benchmarks: ``python -m benchmarks --device cuda --quick`` (with the PyTorch CUDA peer when
  the installed PyTorch has CUDA);
- compute-sanitizer memcheck over the kernel tests and racecheck over the kernels that use
  shared memory (softmax rows, GEMM), where compute-sanitizer is installed.

Every check ends as passed, failed (with its first error) or skipped (with why). The report
is written as ``selftest.json`` and ``selftest.txt`` to ``--out`` (default:
``benchmarks/reference/selftest-<device>/`` in a source checkout). Exit status 1 if any check
failed. Without a GPU every GPU check is skipped with the reason, and the command succeeds.
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]        # the source checkout, when run from one
TESTS = ROOT / "tests"
BUDGET_S = 450                                    # all checks together: under 8 minutes with setup
LIMITS_S = {"pytest-gpu": 240, "compile-replay": 120, "benchmarks": 200, "memcheck": 150, "racecheck": 120}
REPLAY_STEPS = 100
REPLAY_TOL = dict(rtol=1e-3, atol=1e-4)  # float32: replay (gradflow GEMM) vs eager (cuBLAS), per loss and parameter


# ---- one check --------------------------------------------------------------------------------
class Check:
    def __init__(self, name, status, detail="", seconds=0.0, data=None):
        self.name, self.status, self.detail, self.seconds, self.data = name, status, detail, seconds, data or {}

    def line(self):
        text = f"{self.status.upper():7s} {self.name:18s} {self.seconds:6.1f}s  {self.detail}"
        return text.rstrip()

    def as_dict(self):
        return dict(name=self.name, status=self.status, detail=self.detail, seconds=round(self.seconds, 2),
                    **({"data": self.data} if self.data else {}))


def run_bounded(cmd, timeout, env=None, cwd=None):
    """Run ``cmd`` in its own process group; kill the whole group at the time limit.

    Returns (returncode or None on timeout, combined output)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                            env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout))
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, _ = proc.communicate()
        return None, out


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _first_error(output):
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for pattern in (r"^E\s+\S", r"Error", r"FAILED", r"error"):
        hit = next((ln for ln in lines if re.search(pattern, ln)), None)
        if hit:
            return hit[:300]
    return (lines[-1] if lines else "no output")[:300]


# ---- checks run in a child process (python -m gradflow.selftest --run-check NAME) -------------
def environment_info():
    info = dict(python=platform.python_version(), platform=platform.platform())
    import gradflow
    info["gradflow"] = gradflow.__version__
    try:
        import numpy
        info["numpy"] = numpy.__version__
    except ImportError:
        pass
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_cuda"] = bool(torch.cuda.is_available())
    except ImportError:
        info["torch"] = None
    try:
        import cupy
        info["cupy"] = cupy.__version__
        try:
            info["nvrtc"] = ".".join(map(str, cupy.cuda.nvrtc.getVersion()))
        except Exception as e:  # noqa: BLE001
            info["nvrtc"] = f"unavailable ({type(e).__name__}: {e})"
    except ImportError:
        info["cupy"] = None
    from gradflow import backend
    if backend.cuda_is_available():
        cp = backend.cupy()
        props = cp.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        info["device"] = name.decode() if isinstance(name, bytes) else str(name)
        info["compute_capability"] = f"{props['major']}.{props['minor']}"
        info["memory_gib"] = round(props["totalGlobalMem"] / 2 ** 30, 1)
        info["driver"] = _cuda_version(cp.cuda.runtime.driverGetVersion())
        info["cuda_runtime"] = _cuda_version(cp.cuda.runtime.runtimeGetVersion())
        if shutil.which("nvidia-smi"):
            rc, out = run_bounded(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], 20)
            if rc == 0 and out.strip():
                info["driver_version"] = out.strip().splitlines()[0]
    else:
        info["device"] = None
        info["cuda_unavailable"] = backend._cupy_error
    return info


def _cuda_version(v):
    return f"{v // 1000}.{(v % 1000) // 10}"


def compile_replay(device, steps=REPLAY_STEPS, batch=64):
    """Eager vs gradflow.compile replay of an MLP step (dropout, SGD with momentum) over ``steps`` steps."""
    import numpy

    import gradflow as gf
    from gradflow import nn, optim
    from gradflow.nn import functional as F

    def make():
        gf.manual_seed(0)
        model = nn.MLP([784, 128, 32, 10], dropout=0.1).to(device)
        return model, optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def make_step(model, opt):
        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss
        return step

    rng = numpy.random.default_rng(3)
    data = [(gf.tensor(rng.random((batch, 784), dtype=numpy.float32), device=device),
             gf.tensor(rng.integers(0, 10, batch), device=device)) for _ in range(4)]
    (m1, o1), (m2, o2) = make(), make()
    eager, compiled = make_step(m1, o1), gf.compile(make_step(m2, o2), strict=True)
    gf.manual_seed(7)
    eager_losses = [float(eager(*data[i % 4]).item()) for i in range(steps)]
    gf.manual_seed(7)  # dropout draws the same counter offsets in both runs
    replay_losses = [float(compiled(*data[i % 4]).item()) for i in range(steps)]
    if not compiled.captured:
        raise AssertionError("gradflow.compile never switched to replay")
    e, r = numpy.array(eager_losses), numpy.array(replay_losses)
    bad = numpy.abs(r - e) > REPLAY_TOL["atol"] + REPLAY_TOL["rtol"] * numpy.abs(e)
    if bad.any():
        i = int(numpy.argmax(bad))
        raise AssertionError(f"step {i + 1}: replay loss {r[i]!r} vs eager {e[i]!r}")
    worst = 0.0
    for (name, p), q in zip(m1.named_parameters(), m2.parameters()):
        a, b = p.numpy(), q.numpy()
        err = numpy.abs(a - b) - (REPLAY_TOL["atol"] + REPLAY_TOL["rtol"] * numpy.abs(a))
        if (err > 0).any():
            raise AssertionError(f"parameter {name} after {steps} steps: max |replay - eager| "
                                 f"{numpy.abs(a - b).max():.3g} beyond the tolerance")
        worst = max(worst, float(numpy.abs(a - b).max()))
    return dict(steps=steps, final_loss=e[-1], max_loss_diff=float(numpy.abs(r - e).max()), max_param_diff=worst,
                tolerance=f"|replay - eager| <= {REPLAY_TOL['atol']} + {REPLAY_TOL['rtol']} |eager| (float32)")


def _child(name, device):
    if name == "environment":
        result = environment_info()
    elif name == "compile-replay":
        result = compile_replay(device)
    else:
        raise SystemExit(f"unknown check {name}")
    print("SELFTEST-RESULT " + json.dumps(result, default=str))


def _run_child(name, device, timeout):
    start = time.monotonic()
    rc, out = run_bounded([sys.executable, "-m", "gradflow.selftest", "--run-check", name, "--device", device],
                          timeout, env=_env(), cwd=str(ROOT))
    seconds = time.monotonic() - start
    if rc is None:
        return None, f"timed out after {timeout:.0f} s", seconds
    m = re.search(r"^SELFTEST-RESULT (.*)$", out, re.MULTILINE)
    if rc != 0 or m is None:
        return None, _first_error(out), seconds
    return json.loads(m.group(1)), "", seconds


# ---- the checks, in order of importance ---------------------------------------------------------
PYTEST_GROUPS = (  # (report name, does a junit testcase belong to it)
    ("dropout-mask", lambda cls, name: cls.endswith("test_kernels_gpu") and "dropout" in name),
    ("kernels-vs-numpy", lambda cls, name: cls.endswith("test_kernels_gpu")),
    ("gemm", lambda cls, name: cls.endswith("test_gemm_kernel")),
    ("pytest-gpu", lambda cls, name: True),
)


def check_pytest(timeout, out_dir):
    """pytest -m gpu once (CuPy compiles each kernel once); results split into the report's groups.

    Verbose output names each test as it finishes, so a run killed at its time limit still
    reports what passed and which test hung; a finished run is read from its junit XML.
    """
    if not TESTS.is_dir():
        return [Check(g, "skipped", f"no tests/ beside {ROOT.name}: run from a source checkout")
                for g, _ in reversed(PYTEST_GROUPS)]
    junit = Path(out_dir) / "pytest-gpu.xml"
    start = time.monotonic()
    rc, out = run_bounded([sys.executable, "-m", "pytest", "-v", "-m", "gpu", "-p", "no:cacheprovider",
                           "-o", "console_output_style=classic", f"--junitxml={junit}", str(TESTS)],
                          timeout, env=_env(), cwd=str(ROOT))
    seconds = time.monotonic() - start
    (Path(out_dir) / "pytest-gpu.log").write_text(out)
    if rc is not None and junit.exists():
        return checks_from_junit(junit, seconds)
    return checks_from_verbose(out, seconds, None if rc is not None else timeout)


_VERBOSE_LINE = re.compile(r"^(\S+?\.py)::(.+?)(?: (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b(.*))?$")


def checks_from_verbose(output, seconds=0.0, timed_out=None):
    """Checks from ``pytest -v`` output (a run that did not finish: ``timed_out`` = its limit)."""
    records, running = [], None
    for line in output.splitlines():
        m = _VERBOSE_LINE.match(line.strip())
        if not m:
            continue
        path, name, outcome, rest = m.groups()
        cls = path[:-3].replace("/", ".")
        if outcome is None:
            running = (cls, name)
            continue
        running = None
        kind = {"FAILED": "failed", "ERROR": "failed", "SKIPPED": "skipped", "XPASS": "failed"}.get(outcome, "passed")
        records.append((cls, name, kind, rest.strip() or outcome))
    if timed_out is not None:
        cls, name = running or ("(collection)", "pytest")
        records.append((cls, name, "failed", f"timed out after {timed_out:.0f} s while running this test"))
    elif not records:
        return [Check(g, "failed", _first_error(output), seconds) for g, _ in reversed(PYTEST_GROUPS)]
    return _group_checks(records, seconds)


def checks_from_junit(junit, seconds=0.0):
    """One Check per PYTEST_GROUPS entry from a pytest --junitxml file."""
    records = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        cls, name = case.get("classname", ""), case.get("name", "")
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            message = (problem.get("message") or "").strip().splitlines() or [problem.tag]
            records.append((cls, name, "failed", message[0]))
        elif case.find("skipped") is not None:
            records.append((cls, name, "skipped", case.find("skipped").get("message") or "skipped"))
        else:
            records.append((cls, name, "passed", ""))
    return _group_checks(records, seconds)


def _group_checks(records, seconds):
    """(classname, test name, passed|failed|skipped, message) records -> one Check per group."""
    groups = {g: dict(passed=0, failed=[], skipped=[]) for g, _ in PYTEST_GROUPS}
    for cls, name, kind, message in records:
        group = next(g for g, member in PYTEST_GROUPS if member(cls, name))
        if kind == "failed":
            groups[group]["failed"].append(f"{cls}::{name}: {message[:200]}")
        elif kind == "skipped":
            groups[group]["skipped"].append(message)
        else:
            groups[group]["passed"] += 1
    checks = []
    for g, _ in reversed(PYTEST_GROUPS):
        s = groups[g]
        counts = dict(passed=s["passed"], failed=len(s["failed"]), skipped=len(s["skipped"]))
        if s["failed"]:
            checks.append(Check(g, "failed", f"{len(s['failed'])} failed, {s['passed']} passed; first: "
                                f"{s['failed'][0]}", seconds, counts))
        elif s["passed"]:
            checks.append(Check(g, "passed", f"{s['passed']} passed, {len(s['skipped'])} skipped", seconds, counts))
        else:
            why = s["skipped"][0] if s["skipped"] else "no test collected"
            checks.append(Check(g, "skipped", why, seconds, counts))
    return checks


def _sanitizer():
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "compute-sanitizer").exists():
            return str(Path(home) / "bin" / "compute-sanitizer")
    return None


def check_sanitizer(tool, timeout, out_dir):
    exe = _sanitizer()
    if exe is None:
        return Check(tool, "skipped", "compute-sanitizer is not installed (CUDA toolkit's bin/)")
    if not TESTS.is_dir():
        return Check(tool, "skipped", "no tests/: run from a source checkout")
    if tool == "memcheck":
        targets = [str(TESTS / "test_kernels_gpu.py"), str(TESTS / "test_gemm_kernel.py")]
    else:  # racecheck: the kernels with shared memory (softmax rows, GEMM)
        targets = [str(TESTS / "test_kernels_gpu.py"), "-k", "row_kernels or softmax or xent",
                   str(TESTS / "test_gemm_kernel.py")]
    cmd = [exe, "--tool", tool, "--error-exitcode", "86", "--target-processes", "all",
           sys.executable, "-m", "pytest", "-q", "-x", "-m", "gpu", "-p", "no:cacheprovider", *targets]
    start = time.monotonic()
    rc, out = run_bounded(cmd, timeout, env=_env(), cwd=str(ROOT))
    (Path(out_dir) / f"{tool}.log").write_text(out)
    seconds = time.monotonic() - start
    if rc is None:
        return Check(tool, "failed", f"timed out after {timeout:.0f} s", seconds)
    if rc == 0:
        summary = re.findall(r"ERROR SUMMARY: (\d+) error", out)
        return Check(tool, "passed", f"ERROR SUMMARY: {summary[-1] if summary else 0} errors", seconds)
    hit = re.search(r"=========\s+(Invalid|Race|Program hit|Error|Uninitialized)[^\n]*", out)
    return Check(tool, "failed", (hit.group(0) if hit else _first_error(out))[:300], seconds)


def check_benchmarks(timeout, out_dir, torch_cuda):
    if not (ROOT / "benchmarks" / "__main__.py").exists():
        return Check("benchmarks", "skipped", "no benchmarks/ package: run from a source checkout")
    bench_out = Path(out_dir) / "benchmarks"
    start = time.monotonic()
    rc, out = run_bounded([sys.executable, "-m", "benchmarks", "--device", "cuda", "--quick", "--no-progress",
                           "--out", str(bench_out)], timeout, env=_env(), cwd=str(ROOT))
    (Path(out_dir) / "benchmarks.log").write_text(out)
    seconds = time.monotonic() - start
    if rc is None:
        return Check("benchmarks", "failed", f"timed out after {timeout:.0f} s", seconds)
    if rc != 0:
        return Check("benchmarks", "failed", _first_error(out), seconds)
    peer = "with the PyTorch CUDA peer" if torch_cuda else \
        "WITHOUT the PyTorch CUDA peer (installed torch has no CUDA: install a CUDA build of torch==2.13.0)"
    return Check("benchmarks", "passed", f"results in {bench_out}; {peer}", seconds)


# ---- the command ---------------------------------------------------------------------------------
def default_out(device_name):
    slug = re.sub(r"[^a-z0-9]+", "-", (device_name or "no-gpu").lower()).strip("-")
    base = ROOT / "benchmarks" / "reference" if (ROOT / "benchmarks").is_dir() else Path.cwd()
    return base / f"selftest-{slug}"


def run(device="cuda", out=None, budget=BUDGET_S, skip=()):
    started = time.monotonic()
    checks = []

    def remaining():
        return budget - (time.monotonic() - started)

    env_info, why, seconds = _run_child("environment", device, min(120, budget))
    if env_info is None:
        checks.append(Check("environment", "failed", why, seconds))
        env_info = {}
    else:
        desc = env_info.get("device") or f"no usable CUDA device ({env_info.get('cuda_unavailable')})"
        checks.append(Check("environment", "passed", f"{desc}; CuPy {env_info.get('cupy')}, "
                            f"gradflow {env_info.get('gradflow')}", seconds))
    gpu = device == "cuda" and bool(env_info.get("device"))
    no_gpu = ("--device cpu: GPU checks not requested" if device != "cuda" else
              f"no usable CUDA device: {env_info.get('cuda_unavailable') or 'unknown reason'}")
    out_dir = Path(out) if out else default_out(env_info.get("device"))
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        work = out_dir if gpu else Path(scratch)
        plan = [("pytest-gpu", lambda t: check_pytest(t, work)),
                ("compile-replay", None),
                ("benchmarks", lambda t: check_benchmarks(t, work, bool(env_info.get("torch_cuda")))),
                ("memcheck", lambda t: check_sanitizer("memcheck", t, work)),
                ("racecheck", lambda t: check_sanitizer("racecheck", t, work))]
        for name, fn in plan:
            names = [g for g, _ in reversed(PYTEST_GROUPS)] if name == "pytest-gpu" else [name]
            if name in skip:
                checks += [Check(n, "skipped", "skipped by --skip") for n in names]
                continue
            if not gpu:
                checks += [Check(n, "skipped", no_gpu) for n in names]
                continue
            cap = LIMITS_S[name]
            timeout = min(cap, remaining())
            if remaining() < min(10, cap):
                checks += [Check(n, "skipped", f"time budget of {budget} s used up") for n in names]
                continue
            if name == "compile-replay":
                result, why, seconds = _run_child("compile-replay", device, timeout)
                checks.append(Check(name, "failed", why, seconds) if result is None else
                              Check(name, "passed", f"{result['steps']} steps, max |d loss| "
                                    f"{result['max_loss_diff']:.2g}, max |d param| {result['max_param_diff']:.2g}; "
                                    f"{result['tolerance']}", seconds, result))
            else:
                got = fn(timeout)
                checks += got if isinstance(got, list) else [got]
    report = dict(command="python -m gradflow.selftest " + " ".join(sys.argv[1:]),
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  device=device, environment=env_info, budget_s=budget,
                  seconds=round(time.monotonic() - started, 1), checks=[c.as_dict() for c in checks],
                  ok=not any(c.status == "failed" for c in checks))
    lines = [f"gradflow selftest --device {device}  ({report['date']}, {report['seconds']} s of a {budget} s budget)"]
    lines += [f"  {k}: {v}" for k, v in env_info.items()]
    lines += [c.line() for c in checks]
    ran = sum(c.status == "passed" for c in checks) - 1  # the environment line always passes
    verdict = "FAILED" if not report["ok"] else "ok" if ran > 0 else "ok, but no GPU check ran (all skipped)"
    lines.append("RESULT: " + verdict)
    text = "\n".join(lines) + "\n"
    (out_dir / "selftest.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out_dir / "selftest.txt").write_text(text)
    return report, text, out_dir


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m gradflow.selftest", description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--out", default=None, help="report directory (default: benchmarks/reference/selftest-<device>)")
    p.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for all checks (default {BUDGET_S})")
    p.add_argument("--skip", default="", help="comma-separated checks to skip: " + ", ".join(LIMITS_S))
    p.add_argument("--run-check", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.run_check:
        _child(args.run_check, args.device)
        return 0
    report, text, out_dir = run(args.device, args.out, args.budget, {s.strip() for s in args.skip.split(",") if s})
    print(text, end="")
    print(f"report: {out_dir / 'selftest.json'} and selftest.txt")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
