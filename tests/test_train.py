"""fit/evaluate/predict, callbacks, checkpoints (atomic, resumable) and a short real MNIST run."""
import importlib.util
import json
import os
from pathlib import Path

import numpy
import pytest

import gradflow
from gradflow import nn, optim, serialization
from gradflow.data import DataLoader, TensorDataset, random_split
from gradflow.datasets import mnist
from gradflow.optim import lr_scheduler
from gradflow.train import (Callback, EarlyStopping, History, ModelCheckpoint, evaluate, fit, load_checkpoint,
                            predict, save_checkpoint)


@pytest.fixture(autouse=True)
def _on_cpu(monkeypatch):
    """Modules and factories follow the default device; pin it so these tests mean the same on a GPU host."""
    monkeypatch.setenv("GRADFLOW_DEVICE", "cpu")


def blobs(n=600, seed=0):
    """Three well separated Gaussian blobs in 2-D."""
    rng = numpy.random.default_rng(seed)
    centers = numpy.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    y = rng.integers(0, 3, size=n)
    x = (centers[y] + rng.standard_normal((n, 2))).astype(numpy.float32)
    return TensorDataset(x, y.astype(numpy.int64))


def setup(seed=0, dropout=0.2):
    gradflow.manual_seed(seed)
    train, val = random_split(blobs(), [500, 100], generator=0)
    model = nn.MLP([2, 16, 3], dropout=dropout)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    loaders = DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=50)
    return model, opt, sched, loaders


def test_fit_learns_and_records_history():
    model, opt, sched, (train, val) = setup()
    history = fit(model, nn.CrossEntropyLoss(), opt, train, val, epochs=4, scheduler=sched, progress=False)
    assert isinstance(history, History) and history.epochs == [1, 2, 3, 4]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "time", "samples_per_s"):
        assert len(history[key]) == 4, key
    assert history["lr"] == [0.1, 0.05, 0.025, 0.0125]  # the rate used in each epoch
    assert history["val_accuracy"][-1] > 0.95 and history["loss"][-1] < history["loss"][0]
    assert model.training  # fit leaves the model in training mode


def test_fit_compiled_matches_eager_exactly():
    runs = []
    for compiled in (False, True):
        model, opt, sched, (train, val) = setup()
        history = fit(model, nn.CrossEntropyLoss(), opt, train, val, epochs=3, scheduler=sched, progress=False,
                      clip_grad_norm=1.0, compile=compiled)
        runs.append((history["loss"], history["val_accuracy"], [p.numpy() for p in model.parameters()]))
    (loss_e, acc_e, params_e), (loss_c, acc_c, params_c) = runs
    assert loss_e == loss_c and acc_e == acc_c
    for a, b in zip(params_e, params_c):
        numpy.testing.assert_array_equal(a, b)


def test_progress_bar_and_summary(capsys):
    model, opt, _, (train, val) = setup()
    fit(model, nn.CrossEntropyLoss(), opt, train, val, epochs=1, progress=True)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "epoch 1/1" in text and "samples/s" in text and "val_accuracy" in text and "sample/s" in out.err


def test_fit_without_validation_and_regression_targets():
    gradflow.manual_seed(0)
    x = numpy.random.default_rng(0).standard_normal((64, 3)).astype(numpy.float32)
    y = (x @ numpy.array([[1.0], [-1.0], [0.5]], dtype=numpy.float32))
    model = nn.Linear(3, 1)
    history = fit(model, nn.MSELoss(), optim.SGD(model.parameters(), lr=0.1), DataLoader(TensorDataset(x, y), 16),
                  epochs=20, progress=False)
    assert "accuracy" not in history and "val_loss" not in history
    assert history["loss"][-1] < 1e-3


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_loss_stops_with_a_clear_error():
    model, _, _, (train, _) = setup(dropout=0.0)
    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        fit(model, nn.CrossEntropyLoss(), optim.SGD(model.parameters(), lr=1e30), train, epochs=3, progress=False)


def test_evaluate_and_predict():
    model, opt, _, (train, val) = setup(dropout=0.5)
    fit(model, nn.CrossEntropyLoss(), opt, train, epochs=2, progress=False)
    model.train()
    logs = evaluate(model, val, nn.CrossEntropyLoss())
    assert model.training  # restored
    x, y = val.dataset[numpy.arange(100)]
    with gradflow.no_grad():
        logits = model.eval()(x)
    model.train()
    expected_loss = nn.functional.cross_entropy(logits, y).item()
    assert logs["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert logs["accuracy"] == pytest.approx(nn.functional.accuracy(logits, y))
    assert set(evaluate(model, val)) == {"accuracy"}
    out = predict(model, x, batch_size=30)  # eval mode: dropout off, so deterministic
    assert out.shape == (100, 3) and numpy.allclose(out.numpy(), logits.numpy(), atol=1e-6)
    assert numpy.allclose(predict(model, val).numpy(), logits.numpy(), atol=1e-6)
    assert not out.requires_grad


def test_early_stopping_and_restore_best_weights():
    model, _, _, (train, val) = setup()
    opt = optim.SGD(model.parameters(), lr=0.0)  # nothing improves after the first epoch
    stopper = EarlyStopping(monitor="val_loss", patience=2)
    history = fit(model, nn.CrossEntropyLoss(), opt, train, val, epochs=10, callbacks=[stopper], progress=False)
    assert history.epochs == [1, 2, 3] and stopper.stopped_epoch == 3

    class Spoil(Callback):  # make every epoch after the first worse
        def on_epoch_end(self, run, epoch, logs):
            if epoch == 1:
                self.best = {k: v.numpy() for k, v in run.model.state_dict().items()}
    model, opt, _, (train, val) = setup()
    spoil = Spoil()
    opt = optim.SGD(model.parameters(), lr=0.0, weight_decay=0.0)
    restore = EarlyStopping(monitor="val_accuracy", patience=1, restore_best_weights=True, min_delta=0.5)
    fit(model, nn.CrossEntropyLoss(), opt, train, val, epochs=5, callbacks=[spoil, restore], progress=False)
    for k, v in model.state_dict().items():
        assert numpy.array_equal(v.numpy(), spoil.best[k])
    with pytest.raises(KeyError, match="monitored value 'val_loss' is not in this epoch's logs"):
        fit(model, nn.CrossEntropyLoss(), opt, train, epochs=1, callbacks=[EarlyStopping()], progress=False)


def test_model_checkpoint_files(tmp_path):
    model, opt, sched, (train, val) = setup()
    every = ModelCheckpoint(tmp_path / "epoch{epoch}.npz")
    best = ModelCheckpoint(tmp_path / "best.npz", monitor="val_accuracy", save_best_only=True)
    fit(model, nn.CrossEntropyLoss(), opt, train, val, epochs=3, callbacks=[every, best], scheduler=sched,
        progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.npz", "epoch1.npz", "epoch2.npz", "epoch3.npz"]
    state = serialization.load(tmp_path / "epoch2.npz")
    assert state["epoch"] == 2 and state["history"]["epochs"] == [1, 2]
    assert set(state) >= {"model", "optimizer", "schedulers", "rng", "history", "loader", "epoch"}


def test_checkpoint_round_trip(tmp_path):
    model, opt, sched, (train, val) = setup()
    history = fit(model, nn.CrossEntropyLoss(), opt, train, val, epochs=2, scheduler=sched, progress=False)
    save_checkpoint(tmp_path / "c.npz", model, opt, sched, epoch=2, history=history, train_loader=train,
                    extra={"note": "hello"})
    expected_draw = gradflow.random.default_generator.numpy.random()

    model2, opt2, sched2, (train2, _) = setup(seed=5)
    history2 = History()
    gradflow.manual_seed(123)
    state = load_checkpoint(tmp_path / "c.npz", model2, opt2, sched2, history2, train2)
    assert state["epoch"] == 2 and state["extra"] == {"note": "hello"}
    for a, b in zip(model.parameters(), model2.parameters()):
        assert numpy.array_equal(a.numpy(), b.numpy())
    for p, q in zip(model.parameters(), model2.parameters()):
        assert numpy.array_equal(opt.state[p]["momentum_buffer"].numpy(), opt2.state[q]["momentum_buffer"].numpy())
    assert sched2.get_last_lr() == sched.get_last_lr() and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert history2.history == history.history
    assert gradflow.random.default_generator.numpy.random() == expected_draw  # rng restored
    with pytest.raises(ValueError, match="not a gradflow checkpoint"):
        serialization.save({"model": {}}, tmp_path / "other.npz")
        load_checkpoint(tmp_path / "other.npz", model2)


def test_interrupted_checkpoint_write_keeps_the_last_good_one(tmp_path, monkeypatch):
    path = tmp_path / "last.npz"
    model, opt, sched, (train, val) = setup()

    class FailSecondSave(Callback):
        def on_epoch_end(self, run, epoch, logs):
            if epoch == 2:  # make the next write die halfway through the temporary file
                real = numpy.lib.format.write_array
                count = []

                def flaky(fp, array, *args, **kwargs):
                    count.append(1)
                    if len(count) == 3:
                        fp.write(b"\0" * 100)
                        raise OSError("power cut")
                    return real(fp, array, *args, **kwargs)
                monkeypatch.setattr(numpy.lib.format, "write_array", flaky)
    with pytest.raises(OSError, match="power cut"):
        fit(model, nn.CrossEntropyLoss(), opt, train, val, epochs=3, scheduler=sched, progress=False,
            callbacks=[FailSecondSave(), ModelCheckpoint(path)])
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["last.npz"]
    model2, opt2, sched2, _ = setup(seed=9)
    state = load_checkpoint(path, model2, opt2, sched2)
    assert state["epoch"] == 1 and state["history"]["epochs"] == [1]


def test_resume_continues_the_same_run(tmp_path):
    """2 epochs straight == 1 epoch, checkpoint, fresh objects, resume for 1 more (shuffling, dropout, schedule)."""
    model, opt, sched, (train, val) = setup()
    straight = fit(model, nn.CrossEntropyLoss(), opt, train, val, epochs=2, scheduler=sched, progress=False)

    path = tmp_path / "run.npz"
    model1, opt1, sched1, (train1, val1) = setup()
    fit(model1, nn.CrossEntropyLoss(), opt1, train1, val1, epochs=1, scheduler=sched1, progress=False,
        callbacks=[ModelCheckpoint(path)])
    gradflow.manual_seed(999)  # whatever happens in between must not matter
    gradflow.randn(10)
    model2, opt2, sched2, (train2, val2) = setup(seed=42)
    resumed = fit(model2, nn.CrossEntropyLoss(), opt2, train2, val2, epochs=2, scheduler=sched2, progress=False,
                  resume=path)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert numpy.array_equal(a.numpy(), b.numpy())
    assert resumed.epochs == [1, 2]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
        assert resumed[key] == straight[key], key


def test_resume_with_own_loader_generator(tmp_path):
    def make(seed):
        model, opt, _, (train, val) = setup(seed)
        return model, opt, DataLoader(train.dataset, batch_size=32, shuffle=True, generator=7)
    model, opt, loader = make(0)
    fit(model, nn.CrossEntropyLoss(), opt, loader, epochs=2, progress=False)
    model1, opt1, loader1 = make(0)
    fit(model1, nn.CrossEntropyLoss(), opt1, loader1, epochs=1, progress=False,
        callbacks=[ModelCheckpoint(tmp_path / "c.npz")])
    model2, opt2, loader2 = make(3)
    fit(model2, nn.CrossEntropyLoss(), opt2, loader2, epochs=2, progress=False, resume=tmp_path / "c.npz")
    for a, b in zip(model.parameters(), model2.parameters()):
        assert numpy.array_equal(a.numpy(), b.numpy())


# ---- real data -----------------------------------------------------------------------------------------------------
def _bundled():
    names = [n for pair in mnist.FILES.values() for n in pair]
    if not all((mnist.bundled_dir() / (n + ".gz")).is_file() for n in names):
        pytest.skip("the bundled data/mnist copy is not present (not a source checkout)")


@pytest.fixture
def bundled_mnist(tmp_path, monkeypatch):
    monkeypatch.delenv("GRADFLOW_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _bundled()


def test_short_mnist_training_run(bundled_mnist):
    """20k training images, 2 epochs (about a second): the MLP must pass 93% on the 10k test images (it gets ~94.5%)."""
    gradflow.manual_seed(0)
    train_x, train_y = mnist.load_mnist(download=False)
    test_x, test_y = mnist.load_mnist(train=False, download=False)
    train = DataLoader(TensorDataset(train_x[:20000], train_y[:20000]), batch_size=64, shuffle=True)
    test = DataLoader(TensorDataset(test_x, test_y), batch_size=1000)
    model = nn.MLP([784, 128, 32, 10])
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    fit(model, nn.CrossEntropyLoss(), opt, train, epochs=2, progress=False)
    accuracy = evaluate(model, test)["accuracy"]
    assert accuracy > 0.93, accuracy


def test_example_script_runs(bundled_mnist, tmp_path, capsys):
    path = Path(__file__).resolve().parents[1] / "examples" / "mnist_mlp.py"
    spec = importlib.util.spec_from_file_location("mnist_mlp_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "run"
    assert example.main(["--epochs", "2", "--limit", "4000", "--val-size", "500", "--out", str(out),
                         "--no-progress", "--warmup", "1", "--momentum-warmup", "1"]) == 0
    text = capsys.readouterr().out
    assert "epoch 2: validation accuracy" in text and "test accuracy" in text
    metrics = json.loads((out / "metrics.json").read_text())
    # 3.5k images at a warm-up rate: far from trained, but clearly learning (chance is 10%)
    assert metrics["test"]["accuracy"] > 0.7 and len(metrics["history"]["val_accuracy"]) == 2
    assert (out / "checkpoint.npz").is_file()
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "curves.png").stat().st_size > 1000
    # --resume continues the run to 3 epochs
    assert example.main(["--epochs", "3", "--limit", "4000", "--val-size", "500", "--out", str(out),
                         "--no-progress", "--warmup", "1", "--momentum-warmup", "1",
                         "--resume", str(out / "checkpoint.npz")]) == 0
    assert len(json.loads((out / "metrics.json").read_text())["history"]["val_accuracy"]) == 3


def test_example_reports_missing_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(mnist, "bundled_dir", lambda: tmp_path / "none")
    monkeypatch.setattr(mnist, "MIRRORS", ())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("GRADFLOW_DATA", raising=False)
    path = Path(__file__).resolve().parents[1] / "examples" / "mnist_mlp.py"
    spec = importlib.util.spec_from_file_location("mnist_mlp_example2", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    assert example.main(["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "not found. Looked in" in capsys.readouterr().err


# ---- load_checkpoint is all or nothing ---------------------------------------------------------
def _snapshot(model, opt, sched, history):
    return ([p.numpy().copy() for p in model.parameters()],
            {id(p): {k: (v.numpy().copy() if hasattr(v, "numpy") else v) for k, v in s.items()}
             for p, s in opt.state.items()},
            [dict(g, params=None) for g in opt.param_groups], sched.state_dict(), dict(history.history),
            gradflow.random.get_rng_state())


def _assert_untouched(before, after):
    for a, b in zip(before[0], after[0]):
        numpy.testing.assert_array_equal(a, b)
    assert before[1].keys() == after[1].keys()
    for key in before[1]:
        for name, value in before[1][key].items():
            numpy.testing.assert_array_equal(value, after[1][key][name])
    assert before[2:] == after[2:]


def _trained_objects(tmp_path, seed=0):
    model, opt, sched, (train, val) = setup(seed)
    history = fit(model, nn.CrossEntropyLoss(), opt, train, epochs=1, scheduler=sched, progress=False)
    return model, opt, sched, history, train


@pytest.mark.parametrize("fault", ["optimizer_for_other_model", "sgd_state_into_adam", "scheduler_state",
                                   "history_state", "optimizer_hyperparameter", "model_shape"])
def test_failing_checkpoint_load_changes_nothing(tmp_path, fault):
    model, opt, sched, history, train = _trained_objects(tmp_path)
    path = tmp_path / "c.npz"
    save_checkpoint(path, model, opt, sched, epoch=1, history=history, train_loader=train)
    gradflow.manual_seed(7)
    target_model, target_opt, target_sched, _ = setup(seed=3)
    target_history = History()
    if fault == "optimizer_for_other_model":   # the model part fits, the optimizer part does not
        state = serialization.load(path)
        state["optimizer"]["state"][0]["momentum_buffer"] = numpy.zeros((5, 5), numpy.float32)
        serialization.save(state, path)
        match = "has shape"
    elif fault == "sgd_state_into_adam":
        target_opt = optim.Adam(target_model.parameters(), lr=0.1)
        target_sched = lr_scheduler.StepLR(target_opt, step_size=1)
        match = "different optimizer"
    elif fault == "optimizer_hyperparameter":
        state = serialization.load(path)
        state["optimizer"]["param_groups"][0]["momentum"] = -1.0
        serialization.save(state, path)
        match = "momentum"
    elif fault == "scheduler_state":
        state = serialization.load(path)
        state["schedulers"][0] = [1, 2]  # not a scheduler's state dict
        serialization.save(state, path)
        match = "scheduler 0"
    elif fault == "history_state":
        state = serialization.load(path)
        state["history"] = {"epochs": [1]}   # no "history" key
        serialization.save(state, path)
        match = "history"  # applied after the scheduler part, which must be rolled back
    else:
        target_model = nn.MLP([2, 8, 3])
        target_opt = optim.SGD(target_model.parameters(), lr=0.1, momentum=0.9)
        target_sched = lr_scheduler.StepLR(target_opt, step_size=1, gamma=0.5)
        match = "size mismatch"
    before = _snapshot(target_model, target_opt, target_sched, target_history)
    try:
        load_checkpoint(path, target_model, target_opt, target_sched, target_history, train)
    except ValueError as e:
        assert match is None or match in str(e)
    except RuntimeError as e:
        assert match in str(e)
    else:
        pytest.fail("the checkpoint should not fit")
    _assert_untouched(before, _snapshot(target_model, target_opt, target_sched, target_history))


def test_loading_sgd_state_into_adam_names_the_problem():
    model = nn.Linear(3, 2)
    sgd = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(gradflow.ones((4, 3))).sum().backward()
    sgd.step()
    adam = optim.Adam(model.parameters())
    with pytest.raises(ValueError, match=r"\['momentum_buffer'\] that Adam does not keep.*different optimizer"):
        adam.load_state_dict(sgd.state_dict())
    assert adam.state == {}
    adam.step()
    sgd2 = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="that SGD does not keep"):
        sgd2.load_state_dict(adam.state_dict())
    for bad in ({"state": {}}, [1, 2], {"state": {}, "param_groups": [{"lr": 1}]}):
        with pytest.raises(ValueError, match="state_dict|param_groups"):
            adam.load_state_dict(bad)


def test_checkpoint_with_missing_or_mistyped_parts_is_corrupt(tmp_path):
    model, opt, sched, (train, _) = setup()
    path = tmp_path / "c.npz"
    save_checkpoint(path, model, opt, sched, epoch=1, train_loader=train)
    good = serialization.load(path)
    before = [p.numpy().copy() for p in model.parameters()]
    for key, value in (("model", None), ("epoch", "one"), ("schedulers", {}), ("rng", None)):
        state = dict(good)
        if value is None and key == "model":
            del state[key]
        else:
            state[key] = value
        serialization.save(state, path)
        with pytest.raises(ValueError, match=f"corrupt checkpoint .*c.npz: its '{key}' entry is"):
            load_checkpoint(path, model, opt, sched)
    for a, b in zip(before, model.parameters()):
        numpy.testing.assert_array_equal(a, b.numpy())
    path.write_bytes(b"")
    with pytest.raises(serialization.CheckpointError, match="not a valid gradflow checkpoint"):
        load_checkpoint(path, model, opt, sched)


def test_run_outputs_name_their_folder_and_survive_a_missing_matplotlib(tmp_path, monkeypatch):
    import builtins
    from gradflow.plot import write_run_outputs
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    line = write_run_outputs(str(tmp_path), {"loss": [1.0]}, {"test": {"accuracy": 0.5}}, title="t")
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"test": {"accuracy": 0.5}}
    assert not (tmp_path / "curves.png").exists()
    assert "no plot" in line and str(tmp_path / "metrics.json") in line
