"""The benchmark suite must keep running: a quick CPU run end to end, plus its pieces.

No performance target is asserted here (they are reported by the suite itself); these
tests check that the suite produces a sane table, JSON file and plot, and that its
baselines compute the same thing as gradflow.
"""
import json
import os
import subprocess
import sys
import time

import numpy
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import harness, report  # noqa: E402
from benchmarks.numpy_mlp import NumpyMLP, softmax_cross_entropy  # noqa: E402

SIZES = (784, 128, 32, 10)


def _weights(seed=0):
    from benchmarks.contestants import reference_weights
    return reference_weights(SIZES, seed)[0]


def test_quick_run_writes_table_json_and_plot(tmp_path):
    """``python -m benchmarks --quick`` on the CPU: the training, ops, memory and accuracy cases,
    two repeats, no waiting for a quiet machine (inference and the large MLP share the code
    paths exercised here)."""
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--device", "cpu", "--no-progress", "--repeats", "2",
           "--quiet-wait", "0", "--cases", "mlp,ops,memory,tta", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout

    # the table, the ratios and the targets were printed
    assert "== MLP training throughput: 784-128-32-10 ==" in out
    assert "numpy-loop/cpu" in out and "samples/s" in out
    assert "same-weights check" in out and "-> OK" in out
    assert "== op microbenchmarks" in out and "== memory held at the peak of a training step" in out
    assert "== time to 97% MNIST test accuracy" in out
    assert "== targets ==" in out and "CPU mlp batch 128: gradflow >= 0.85x NumPy loop" in out

    data = json.loads((tmp_path / "results.json").read_text())
    meta = data["meta"]
    assert meta["quick"] is True and meta["devices"] == ["cpu"]
    machine = meta["machine"]
    for key in ("cpu_model", "cpu_count", "numpy", "numpy_blas", "torch", "gpu", "cuda_driver", "cupy"):
        assert key in machine
    assert meta["threads"] >= 1
    assert {"gradflow", "gradflow-captured", "numpy-loop", "torch"} <= set(meta["workers"])   # one per contestant

    records = [r for r in data["records"] if "error" not in r]
    errors = [r for r in data["records"] if "error" in r]
    assert not errors, errors
    agreement = [r for r in records if r["case"] == "agreement"]
    assert agreement and agreement[0]["ok"]

    train = [r for r in records if r["case"] == "mlp"]
    labels = {r["label"] for r in train}
    assert {"gradflow/cpu", "numpy-loop/cpu"} <= labels
    for r in train:
        t = r["timing"]
        assert len(t["times"]) >= 2 and all(x > 0 for x in t["times"])      # every raw timing kept
        assert t["min_s"] <= t["median_s"] <= t["max_s"] and t["first_call_s"] > 0
        assert r["value"] == pytest.approx(r["batch"] / t["median_s"])
        assert numpy.isfinite(r["final_loss"])
    assert {r["batch"] for r in train} == {128, 2048}

    ops = [r for r in records if r["case"] == "ops"]
    assert {"matmul", "relu", "softmax_ce", "sgd_update"} <= {r["op"] for r in ops}
    assert all(r["value"] > 0 for r in ops)
    memory = [r for r in records if r["case"] == "memory"]
    assert memory and all(r["peak_bytes"] > 0 for r in memory)
    tta = [r for r in records if r["case"] == "tta"]
    assert tta and all(0.5 < r["accuracy"] <= 1.0 and r["epochs"] == pytest.approx(1.0) for r in tta)

    assert any(r["what"] == "gradflow / numpy-loop" for r in data["ratios"])
    statuses = {t["target"]: t["status"] for t in data["targets"]}
    assert statuses["CPU mlp batch 128: gradflow >= 0.85x NumPy loop"] in ("met", "missed")
    assert statuses["GPU mlp batch 128: gradflow >= 1.0x PyTorch eager"] == "not measured"
    if data["plot"]:
        assert (tmp_path / "throughput.png").stat().st_size > 1000


def test_unknown_case_is_rejected():
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--cases", "nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown case" in proc.stderr


def test_numpy_loop_matches_gradflow():
    """The hand-written baseline trains exactly like gradflow's MLP + cross_entropy + SGD."""
    from benchmarks.contestants import GradflowTrainer
    from gradflow.tensor import Tensor
    weights = _weights()
    rng = numpy.random.default_rng(1)
    loop = NumpyMLP(weights, lr=0.1, momentum=0.9)
    gf = GradflowTrainer(SIZES, weights, 0.1, 0.9, "cpu")
    for _ in range(3):
        x = rng.random((64, 784), dtype=numpy.float32)
        y = rng.integers(0, 10, 64)
        a = float(loop.step(x, y))
        b = float(gf.step(Tensor(x), Tensor(y)).item())
        assert a == pytest.approx(b, rel=1e-5)
    for (w1, b1), (w2, b2) in zip(loop.weights(), gf.weights()):
        numpy.testing.assert_allclose(w1, w2, rtol=1e-4, atol=1e-6)
        numpy.testing.assert_allclose(b1, b2, rtol=1e-4, atol=1e-6)


def test_softmax_cross_entropy_gradient():
    rng = numpy.random.default_rng(2)
    logits = rng.standard_normal((5, 4))
    y = numpy.array([0, 3, 1, 1, 2])
    loss, g = softmax_cross_entropy(numpy, logits.copy(), y)
    eps, num = 1e-6, numpy.zeros_like(logits)
    for i in range(5):
        for j in range(4):
            d = numpy.zeros_like(logits)
            d[i, j] = eps
            num[i, j] = (softmax_cross_entropy(numpy, logits + d, y)[0] -
                         softmax_cross_entropy(numpy, logits - d, y)[0]) / (2 * eps)
    numpy.testing.assert_allclose(g, num, atol=1e-6)


def test_timing_sets_aside_disturbed_repeats():
    t = harness.Timing(times=[1.0, 1.1, 9.0, 1.05], calls_per_repeat=3, first_call_s=2.0, warmup_calls=1,
                       clock="perf_counter", foreign=[0.0, 0.01, 0.6, 0.02])
    assert t.used == [True, True, False, True] and not t.contended
    assert t.median_s == pytest.approx(1.05) and t.max_s == pytest.approx(1.1)
    busy = harness.Timing(times=[1.0, 2.0, 3.0], calls_per_repeat=1, first_call_s=1.0, warmup_calls=0,
                          clock="perf_counter", foreign=[0.5, 0.5, 0.0])
    assert busy.contended and busy.median_s == pytest.approx(2.0)


def test_runner_calibrates_and_rotates_inputs():
    seen = []
    runner = harness.Runner(lambda i: seen.append(i), [(0,), (1,), (2,)], harness.WallClock())
    runner.prepare(warmup=2, min_time=0.0)
    runner.repeat()
    runner.repeat()
    t = runner.timing()
    assert seen[:4] == [0, 1, 2, 0] and len(t.times) == 2 and len(t.foreign) == 2


def test_runner_calibrates_on_steady_calls_not_the_slow_first_ones():
    """A compiled step records its first calls (many times slower): calibrating on them made its
    repeats a fraction of min_time long."""
    calls = []

    def step():
        calls.append(None)
        time.sleep(0.05 if len(calls) <= 3 else 0.001)   # the first call and two warm-up calls: slow

    runner = harness.Runner(step, [()], harness.WallClock())
    runner.prepare(warmup=2, min_time=0.2)
    assert 100 <= runner.calls <= 200   # ~0.2 s of 1 ms calls, not 0.2 s of the warm-up's ~34 ms


def test_ratio_of_timings_is_the_median_of_per_round_ratios():
    """Side by side timings pair round by round: a machine slowed in some rounds slows both there."""
    def rec(contestant, times, foreign=None):
        t = harness.Timing(times=times, calls_per_repeat=10, first_call_s=1.0, warmup_calls=1,
                           clock="perf_counter", foreign=foreign or [0.0] * len(times))
        return {"case": "mlp", "model": "m", "batch": 32, "contestant": contestant, "device": "cpu",
                "label": f"{contestant}/cpu", "unit": "samples/s", "value": 32 / t.median_s, "timing": t.as_dict()}
    # the machine ran at half speed in rounds 1-3: the medians of the two mix the two speeds
    fast = rec("gradflow-captured", [1.0, 2.0, 2.0, 2.0, 1.0, 1.0])
    slow = rec("numpy-loop", [1.1, 2.2, 2.2, 1.1, 1.1, 1.1])
    assert report.speed_ratio(fast, slow) == pytest.approx(1.1)
    assert slow["value"] / fast["value"] != pytest.approx(1.1)   # what the ratio of medians says
    # a round set aside for other processes' load on either side is left out
    disturbed = rec("numpy-loop", [1.1, 2.2, 2.2, 9.0, 1.1, 1.1], foreign=[0, 0, 0, 0.9, 0, 0])
    assert report.speed_ratio(fast, disturbed) == pytest.approx(1.1)
    targets = {t["target"]: t for t in report.compute_targets([fast, slow], (32,), ())}
    assert targets["CPU mlp batch 32: compiled step >= 1.0x NumPy loop"]["ratio"] == pytest.approx(1.1)


def test_ratios_and_targets_from_records():
    def rec(contestant, device, value, batch=128, case="mlp"):
        return {"case": case, "model": "784-128-32-10", "batch": batch, "contestant": contestant,
                "device": device, "label": f"{contestant}/{device}", "unit": "samples/s", "value": value}
    records = [rec("gradflow", "cpu", 90.0), rec("torch", "cpu", 100.0), rec("numpy-loop", "cpu", 100.0),
               rec("gradflow", "cuda", 900.0), rec("torch", "cuda", 600.0)]
    ratios = {(r["what"], r["device"]): r["ratio"] for r in report.compute_ratios(records)}
    assert ratios[("gradflow / torch", "cpu")] == pytest.approx(0.9)
    assert ratios[("gradflow GPU / CPU", "cuda/cpu")] == pytest.approx(10.0)
    targets = {t["target"]: t for t in report.compute_targets(records, (128,), (256,))}
    assert targets["CPU mlp batch 128: gradflow >= 1.0x PyTorch eager"]["status"] == "missed"
    assert targets["CPU mlp batch 128: gradflow >= 0.85x NumPy loop"]["status"] == "met"
    assert targets["GPU mlp batch 128: gradflow >= 1.0x PyTorch eager"]["status"] == "met"
    assert targets["GPU mlp_large batch 256 (matmul-bound): gradflow >= 0.9x PyTorch eager"]["status"] == \
        "not measured"


def test_op_microbenchmarks_compute_the_same_thing():
    """Each op's gradflow, PyTorch and hand-written versions agree on the same inputs."""
    from benchmarks import contestants as C
    from benchmarks import ops_bench
    torch_ok = C.Torch("cpu").available()[0]

    def host(value):
        value = value[0] if isinstance(value, tuple) else value
        return numpy.asarray(value.detach() if hasattr(value, "detach") else value, dtype=numpy.float64)

    for spec in ops_bench.op_specs(quick=False):
        if spec.kind not in ("matmul", "activation", "softmax_ce", "optimizer"):
            continue   # dropout draws different masks by design
        kinds = [C.Gradflow, C.NumpyLoop] + ([C.Torch] if torch_ok else [])
        outputs = {}
        for kind in kinds:
            c = kind("cpu")
            fn, inputs = ops_bench.build(spec, c, numpy.random.default_rng(5), 1)
            out = fn(*inputs[0])
            if spec.kind == "softmax_ce" and c.framework == "numpy":
                out = out[1]                      # (loss, grad): compare the gradient
            if spec.kind == "optimizer":         # compare the updated parameter
                out = inputs[0][0].param_groups[0]["params"][0] if c.framework == "torch" else inputs[0][0]
            outputs[c.label] = host(out)
        ref = outputs["numpy-loop/cpu"]
        for label, value in outputs.items():
            numpy.testing.assert_allclose(value, ref, rtol=2e-4, atol=2e-5, err_msg=f"{spec.op} {spec.shape} {label}")


def test_cnn_case_contestants_start_from_the_same_model():
    """The ``cnn`` case: gradflow's and PyTorch's trainers hold examples/mnist_cnn.py's CNN with
    the same initial state, so their eval-mode outputs agree; the conv2d op builders agree too."""
    import numpy
    from benchmarks import contestants as C
    from benchmarks import ops_bench
    state, _ = C.reference_cnn_weights(0)
    peers = [k("cpu") for k in (C.Gradflow, C.GradflowCaptured, C.Torch)]
    x = numpy.random.default_rng(0).standard_normal((8, 28, 28), dtype=numpy.float32)
    outs = []
    for c in peers:
        trainer = c.cnn_trainer(state, 0.01, 0.9)
        trainer.model.eval()
        outs.append(numpy.asarray(c.to_host(trainer.predict(c.put(x)))))
    for out in outs[1:]:
        numpy.testing.assert_allclose(out, outs[0], rtol=1e-4, atol=1e-4)
    captured = peers[1].cnn_trainer(state, 0.01, 0.9)  # as the throughput session uses it
    y = numpy.arange(8) % 10
    for _ in range(3):
        loss = captured.step(peers[1].put(x), peers[1].put(y))
    assert numpy.isfinite(float(peers[1].to_host(loss)))
    assert captured.capture_status() == {"captured": True, "eager_reason": None}
    spec = next(s for s in ops_bench.op_specs(True) if s.op == "conv2d")
    results = []
    for c in (peers[0], peers[2]):
        fn, inputs = ops_bench.build(spec, c, numpy.random.default_rng(1), n_inputs=1)
        results.append([numpy.asarray(c.to_host(g)) for g in fn(*inputs[0])])
    for a, b in zip(*results):
        numpy.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)


def test_profile_step_times_each_line_of_the_generated_replay(capsys):
    """``python -m benchmarks.profile_step --captured`` on the CPU ends with the replay line by line:
    every line of the generated source (deletions aside) gets a row, and the rows add up to the
    whole replay."""
    from benchmarks import profile_step
    assert profile_step.main(["--captured", "--batch", "8", "--steps", "10", "--sizes", "12,6,3", "--top", "3"]) == 0
    out = capsys.readouterr().out
    view = out[out.index("the generated replay, line by line"):].splitlines()[1:]
    rows = [line.split(None, 2) for line in view if line.strip() and not line.strip().startswith("WARNING")]
    labels = [r[2] for r in rows]
    assert labels[-1] == "(the whole replay)" and any(label.startswith("c") and "(*a" in label for label in labels)
    assert any("@" in label for label in labels) and labels[-2].startswith("return")
    assert all(float(r[0]) <= float(r[1]) for r in rows)
