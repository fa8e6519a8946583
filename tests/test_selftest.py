"""python -m gradflow.selftest: runs cleanly without a GPU (every GPU check skipped, with why), and its
pieces (time limits, pytest result grouping, the compile-replay check) work."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradflow import backend, selftest

GPU_CHECKS = ["pytest-gpu", "gemm", "kernels-vs-numpy", "dropout-mask", "compile-replay", "benchmarks", "memcheck",
              "racecheck"]


@pytest.mark.skipif(backend.cuda_is_available(), reason="checks the report of a machine without a GPU")
def test_selftest_without_gpu_skips_every_gpu_check_and_says_why(tmp_path):
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "gradflow.selftest", "--device", "cuda", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=root, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads((tmp_path / "selftest.json").read_text())
    text = (tmp_path / "selftest.txt").read_text()
    assert set(report) >= {"command", "date", "device", "environment", "budget_s", "seconds", "checks", "ok"}
    assert report["ok"] is True and report["device"] == "cuda"
    env = report["environment"]
    assert env["gradflow"] and env["device"] is None and "cuda_unavailable" in env
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == ["environment"] + GPU_CHECKS
    assert checks["environment"]["status"] == "passed"
    for name in GPU_CHECKS:
        assert checks[name]["status"] == "skipped", checks[name]
        assert checks[name]["detail"].startswith("no usable CUDA device: "), checks[name]
        assert f"SKIPPED {name}" in text
    assert text.rstrip().endswith("RESULT: ok, but no GPU check ran (all skipped)")


def test_a_hanging_check_is_killed_at_its_time_limit():
    start = time.monotonic()
    rc, _ = selftest.run_bounded([sys.executable, "-c", "import time; time.sleep(60)"], 1.0)
    assert rc is None and time.monotonic() - start < 30
    rc, out = selftest.run_bounded([sys.executable, "-c", "print('hi')"], 30)
    assert rc == 0 and out.strip() == "hi"


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="tests.test_kernels_gpu" name="test_elementwise_kernel_matches_numpy[f32-relu_fwd]"/>
<testcase classname="tests.test_kernels_gpu" name="test_dropout_masks_identical_on_cpu_and_gpu">
  <failure message="AssertionError: arrays differ&#10;more">trace</failure></testcase>
<testcase classname="tests.test_gemm_kernel" name="test_gpu_gemm_matches_cublas[float32]">
  <skipped message="no usable CUDA device" /></testcase>
<testcase classname="tests.test_ops_grad" name="test_unary[cuda-exp]"/>
<testcase classname="tests.test_ops_grad" name="test_unary[cuda-log]"><error message="">boom</error></testcase>
</testsuite></testsuites>"""


def test_pytest_results_are_grouped_into_report_lines(tmp_path):
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT)
    checks = {c.name: c for c in selftest.checks_from_junit(junit, 3.0)}
    assert list(checks) == ["pytest-gpu", "gemm", "kernels-vs-numpy", "dropout-mask"]
    assert checks["kernels-vs-numpy"].status == "passed"
    assert checks["dropout-mask"].status == "failed" and "arrays differ" in checks["dropout-mask"].detail
    assert "more" not in checks["dropout-mask"].detail  # the first line of the first error
    assert checks["gemm"].status == "skipped" and checks["gemm"].detail == "no usable CUDA device"
    assert checks["pytest-gpu"].status == "failed" and "test_unary[cuda-log]" in checks["pytest-gpu"].detail


def test_compile_replay_check_on_the_cpu():
    """The check itself runs (on the CPU replay is bit-identical, so every difference is 0)."""
    result = selftest.compile_replay("cpu", steps=12, batch=16)
    assert result["steps"] == 12 and result["max_loss_diff"] == 0 and result["max_param_diff"] == 0


def test_orchestration_on_a_pretend_gpu(monkeypatch, tmp_path):
    """The GPU branch of run(): every check is called with a time limit inside the budget, a failure
    makes the run fail, and a spent budget skips what is left (with why)."""
    calls = []

    def child(name, device, timeout):
        calls.append((name, timeout))
        if name == "environment":
            return {"device": "Pretend GPU", "gradflow": "x", "cupy": "14.2.0", "torch_cuda": False}, "", 0.1
        return {"steps": 100, "max_loss_diff": 0.0, "max_param_diff": 0.0, "tolerance": "t"}, "", 0.1

    monkeypatch.setattr(selftest, "_run_child", child)
    monkeypatch.setattr(selftest, "check_pytest", lambda t, out: [
        selftest.Check("pytest-gpu", "passed", "3 passed"), selftest.Check("gemm", "passed"),
        selftest.Check("kernels-vs-numpy", "failed", "relu_fwd: 1 mismatch"), selftest.Check("dropout-mask", "passed")])

    def slow_benchmarks(t, out, torch_cuda):
        calls.append(("benchmarks", t))
        time.sleep(1.2)
        return selftest.Check("benchmarks", "passed")

    monkeypatch.setattr(selftest, "check_benchmarks", slow_benchmarks)
    monkeypatch.setattr(selftest, "check_sanitizer", lambda tool, t, out: selftest.Check(tool, "passed"))
    monkeypatch.setattr(selftest, "LIMITS_S", {**selftest.LIMITS_S, "memcheck": 5})
    report, text, out = selftest.run("cuda", tmp_path, budget=11)
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status["kernels-vs-numpy"] == "failed" and report["ok"] is False and "RESULT: FAILED" in text
    assert status["compile-replay"] == "passed" and status["benchmarks"] == "passed"
    assert all(t <= 11 for _, t in calls)
    assert status["racecheck"] == "skipped"  # the 11 s budget is gone by then
    assert "time budget" in next(c["detail"] for c in report["checks"] if c["name"] == "racecheck")
    assert json.loads((tmp_path / "selftest.json").read_text())["environment"]["device"] == "Pretend GPU"


VERBOSE = """============================= test session starts ==============================
collecting ... collected 5 items / 2 deselected / 3 selected
tests/test_ops_grad.py::test_binary_broadcasting[cuda-((3, 4), (3, 4))-add] PASSED
tests/test_kernels_gpu.py::test_elementwise_kernel_matches_numpy[f32-relu_fwd] PASSED
tests/test_gemm_kernel.py::test_gpu_gemm_matches_cublas[float32] SKIPPED (no usable CUDA device)
tests/test_kernels_gpu.py::test_dropout_masks_identical_on_cpu_and_gpu """


def test_a_pytest_run_killed_at_its_limit_still_reports_what_ran():
    checks = {c.name: c for c in selftest.checks_from_verbose(VERBOSE, 240.0, timed_out=240)}
    assert checks["pytest-gpu"].status == "passed" and checks["kernels-vs-numpy"].status == "passed"
    assert checks["gemm"].status == "skipped" and "no usable CUDA device" in checks["gemm"].detail
    assert checks["dropout-mask"].status == "failed"
    assert "timed out after 240 s" in checks["dropout-mask"].detail
    assert "test_dropout_masks_identical_on_cpu_and_gpu" in checks["dropout-mask"].detail


def test_verbose_output_of_a_real_pytest_run_is_understood(tmp_path):
    """The parser reads what this pytest really prints with the selftest's flags."""
    test = tmp_path / "test_sample.py"
    test.write_text("import pytest\n"
                    "@pytest.mark.parametrize('x', [(1, 2), 3])\ndef test_ok(x):\n    pass\n"
                    "def test_bad():\n    assert 0, 'nope'\n"
                    "@pytest.mark.skip(reason='why not')\ndef test_skip():\n    pass\n")
    rc, out = selftest.run_bounded([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-o",
                                    "console_output_style=classic", str(test)], 120, cwd=str(tmp_path))
    assert rc == 1, out
    check, = [c for c in selftest.checks_from_verbose(out) if c.name == "pytest-gpu"]
    assert check.status == "failed" and check.data == dict(passed=2, failed=1, skipped=1), (check.data, out)
    assert "test_bad" in check.detail
