"""A training loop: ``fit`` with progress bars, validation, callbacks, checkpoints and resume.

``fit`` trains for whole epochs; after each one it validates, steps the schedulers, records
the epoch's numbers in a ``History`` and calls the callbacks (``EarlyStopping``,
``ModelCheckpoint``, your own ``Callback``). A checkpoint holds everything needed to carry
on exactly where the run stopped: model, optimizer, schedulers, epoch, history, the random
streams and the data loader's generator; ``fit(..., resume=path)`` continues from it.

Classification accuracy is reported whenever the model's output is (N, C) and the targets
are integer class ids. Losses are assumed to be batch means (``reduction='mean'``).
"""
import math
import os
import sys
import time

import numpy

from gradflow import backend, serialization
from gradflow.compile import compile as compile_step
from gradflow import random as gf_random
from gradflow.nn.losses import predicted_classes
from gradflow.nn.utils import clip_grad_norm_
from gradflow.tensor import Tensor, no_grad

CHECKPOINT_FORMAT = "gradflow-checkpoint"


# ---- callbacks ----------------------------------------------------------------------------------
class Callback:
    """Hooks into ``fit``. ``run`` is the ``TrainingRun``; set ``run.stop_training = True`` to stop."""

    def on_train_begin(self, run):
        pass

    def on_epoch_end(self, run, epoch, logs):
        pass

    def on_train_end(self, run):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class History(Callback):
    """Per-epoch numbers: ``history['val_accuracy'][i]`` is epoch ``i + 1``'s validation accuracy."""

    def __init__(self):
        self.history = {}
        self.epochs = []

    def on_epoch_end(self, run, epoch, logs):
        self.epochs.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, [None] * (len(self.epochs) - 1)).append(value)
        for key, values in self.history.items():  # keys missing this epoch
            if len(values) < len(self.epochs):
                values.append(None)

    def __getitem__(self, key):
        return self.history[key]

    def __contains__(self, key):
        return key in self.history

    def state_dict(self):
        return {"epochs": list(self.epochs), "history": {k: list(v) for k, v in self.history.items()}}

    def load_state_dict(self, state):
        self.epochs = list(state["epochs"])
        self.history = {k: list(v) for k, v in state["history"].items()}


def _improved(value, best, mode, min_delta):
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _mode(monitor, mode):
    if mode == "auto":
        return "max" if "acc" in monitor else "min"
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    return mode


def _monitored(logs, monitor, who):
    if monitor not in logs or logs[monitor] is None:
        raise KeyError(f"{who}: monitored value {monitor!r} is not in this epoch's logs {sorted(logs)}; "
                       f"pass val_loader to fit() or monitor one of those")
    return logs[monitor]


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(self, monitor="val_loss", patience=3, min_delta=0.0, mode="auto", restore_best_weights=False):
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.mode = _mode(monitor, mode)
        self.restore_best_weights = restore_best_weights
        self.best, self.wait, self.stopped_epoch = None, 0, None
        self._best_weights = None

    def on_epoch_end(self, run, epoch, logs):
        value = _monitored(logs, self.monitor, "EarlyStopping")
        if _improved(value, self.best, self.mode, self.min_delta):
            self.best, self.wait = value, 0
            if self.restore_best_weights:
                self._best_weights = {k: v.data.copy() for k, v in run.model.state_dict().items()}
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped_epoch = epoch
                run.stop_training = True

    def on_train_end(self, run):
        if self.restore_best_weights and self._best_weights is not None:
            run.model.load_state_dict(self._best_weights)

    def state_dict(self):
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state):
        self.best, self.wait = state["best"], state["wait"]


class ModelCheckpoint(Callback):
    """Save a full checkpoint after every epoch, or only when ``monitor`` improves (``save_best_only``).

    ``path`` may contain ``{epoch}`` to keep one file per epoch. Writes are atomic.
    """

    def __init__(self, path, monitor="val_loss", save_best_only=False, mode="auto"):
        self.path, self.monitor, self.save_best_only = os.fspath(path), monitor, save_best_only
        self.mode = _mode(monitor, mode)
        self.best = None
        self.last_saved = None

    def on_epoch_end(self, run, epoch, logs):
        if self.save_best_only:
            value = _monitored(logs, self.monitor, "ModelCheckpoint")
            if not _improved(value, self.best, self.mode, 0.0):
                return
            self.best = value
        self.last_saved = self.path.format(epoch=epoch)
        run.save_checkpoint(self.last_saved)

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state):
        self.best = state["best"]


# ---- checkpoints ----------------------------------------------------------------------------------
def _as_list(schedulers):
    if schedulers is None:
        return []
    return list(schedulers) if isinstance(schedulers, (list, tuple)) else [schedulers]


def save_checkpoint(path, model, optimizer=None, scheduler=None, epoch=0, history=None, train_loader=None,
                    callbacks=(), extra=None):
    """Atomically write everything needed to resume training to ``path`` (.npz + JSON, no pickle)."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "epoch": int(epoch),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "schedulers": [s.state_dict() for s in _as_list(scheduler)],
        "rng": gf_random.get_rng_state(),
        "history": history.state_dict() if history is not None else None,
        "loader": train_loader.state_dict() if hasattr(train_loader, "state_dict") else None,
        "callbacks": [cb.state_dict() for cb in callbacks],
        "extra": extra,
    }
    serialization.save(state, path)


def load_checkpoint(path, model, optimizer=None, scheduler=None, history=None, train_loader=None, callbacks=(),
                    restore_rng=True):
    """Restore what ``save_checkpoint`` wrote into the given objects; returns the checkpoint dict."""
    state = serialization.load(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a gradflow checkpoint (use gradflow.serialization.load for other files)")
    model.load_state_dict(state["model"])
    if optimizer is not None:
        if state["optimizer"] is None:
            raise ValueError(f"{path} holds no optimizer state")
        optimizer.load_state_dict(state["optimizer"])
    schedulers = _as_list(scheduler)
    if schedulers:
        if len(schedulers) != len(state["schedulers"]):
            raise ValueError(f"{path} holds {len(state['schedulers'])} scheduler states, got {len(schedulers)} schedulers")
        for s, sd in zip(schedulers, state["schedulers"]):
            s.load_state_dict(sd)
    if history is not None and state["history"] is not None:
        history.load_state_dict(state["history"])
    if train_loader is not None and state["loader"] and hasattr(train_loader, "load_state_dict"):
        train_loader.load_state_dict(state["loader"])
    for cb, cb_state in zip(callbacks, state["callbacks"]):
        cb.load_state_dict(cb_state)
    if restore_rng:
        gf_random.set_rng_state(state["rng"])
    return state


class TrainingRun:
    """What ``fit`` is working on; callbacks receive it."""

    def __init__(self, model, loss_fn, optimizer, train_loader, schedulers, history, callbacks):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.train_loader, self.schedulers = train_loader, schedulers
        self.history, self.callbacks = history, callbacks
        self.epoch = 0  # completed epochs
        self.stop_training = False
        self.is_main = True  # False on ranks other than 0 of a distributed run: they do not write files

    def save_checkpoint(self, path, extra=None):
        if not self.is_main:
            return
        save_checkpoint(path, self.model, self.optimizer, self.schedulers, self.epoch, self.history,
                        self.train_loader, [cb for cb in self.callbacks if cb is not self.history], extra)

    def load_checkpoint(self, path):
        state = load_checkpoint(path, self.model, self.optimizer, self.schedulers, self.history, self.train_loader,
                                [cb for cb in self.callbacks if cb is not self.history])
        self.epoch = state["epoch"]
        return state


# ---- the loop ------------------------------------------------------------------------------------------
def _split(batch):
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch
    raise ValueError("fit/evaluate expect batches of (inputs, targets); got "
                     f"{type(batch).__name__} of length {len(batch) if hasattr(batch, '__len__') else '?'}")


def _is_classification(output, target):
    return output.ndim == 2 and output.shape[1] > 1 and target.ndim == 1 and target.dtype.kind in "iu"


class _Meter:
    """Sums of loss and correct predictions kept on the device: one host sync per read, not per batch."""

    def __init__(self):
        self.loss_sum = self.correct = None
        self.count = 0
        self.classification = False

    def add(self, output, target, loss):
        n = target.shape[0]
        weighted = loss.data * n
        self.loss_sum = weighted if self.loss_sum is None else self.loss_sum + weighted
        if _is_classification(output, target):
            self.classification = True
            hits = (predicted_classes(output) == target.data).sum()
            self.correct = hits if self.correct is None else self.correct + hits
        self.count += n

    def all_reduce(self):
        """Sum the counts of every rank (distributed training): each rank then reports the global mean."""
        from gradflow import distributed
        sums = Tensor(numpy.array([float(self.loss_sum if self.loss_sum is not None else 0.0),
                                   float(self.correct if self.correct is not None else 0), float(self.count),
                                   float(self.classification)]))
        distributed.all_reduce(sums)
        loss_sum, correct, count, classification = sums.numpy().tolist()
        self.loss_sum, self.count = loss_sum, int(count)
        self.correct = correct if classification else None
        self.classification = bool(classification)

    def result(self, prefix=""):
        if not self.count:
            return {}
        logs = {prefix + "loss": float(self.loss_sum) / self.count}
        if self.classification:
            logs[prefix + "accuracy"] = float(self.correct) / self.count
        return logs


def _samples(loader):
    dataset, batch_size = getattr(loader, "dataset", None), getattr(loader, "batch_size", None)
    if dataset is None or batch_size is None:
        return None
    sampler = getattr(loader, "sampler", None)
    n = len(dataset) if sampler is None else len(sampler)
    return n - n % batch_size if getattr(loader, "drop_last", False) else n


def _progress_bar(loader, desc, progress):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=_samples(loader), desc=desc, unit="sample", unit_scale=True, leave=False,
                dynamic_ncols=True, mininterval=0.5, file=sys.stderr)


def _log(message, progress):
    if not progress:
        return
    try:
        from tqdm.auto import tqdm
        tqdm.write(message)
    except ImportError:
        print(message)


def training_step(model, loss_fn, optimizer, clip_grad_norm=None):
    """The function of one optimizer step on a batch: ``step(x, y) -> (output, loss)``.

    Pass it to ``gradflow.compile`` to replay it without the tape (``fit(compile=True)``).
    """
    def step(x, y):
        optimizer.zero_grad()
        output = model(x)
        loss = loss_fn(output, y)
        loss.backward()
        if clip_grad_norm is not None:
            clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
        return output.detach(), loss.detach()
    return step


def train_epoch(model, loss_fn, optimizer, loader, progress=False, desc="train", clip_grad_norm=None,
                refresh_every=20, step=None, distributed=False):
    """One pass over ``loader`` taking an optimizer step per batch; returns {'loss', 'accuracy'?, ...}.

    ``step`` is the step function to call per batch (default: ``training_step(...)``).
    ``distributed``: every rank runs this on its share; the numbers are over all ranks.
    """
    model.train()
    step = step or training_step(model, loss_fn, optimizer, clip_grad_norm)
    meter = _Meter()
    bar = _progress_bar(loader, desc, progress)
    start = time.perf_counter()
    for i, batch in enumerate(loader):
        x, y = _split(batch)
        output, loss = step(x, y)
        meter.add(output, y, loss)
        if bar is not None:
            bar.update(y.shape[0])
            if i % refresh_every == 0:
                bar.set_postfix({k: f"{v:.4f}" for k, v in meter.result().items()}, refresh=False)
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    if distributed:
        meter.all_reduce()
        seconds = _max_over_ranks(seconds)
    logs = meter.result()
    if logs and not math.isfinite(logs["loss"]):
        raise FloatingPointError(f"training loss became {logs['loss']}; lower the learning rate or clip gradients")
    logs["time"] = seconds
    logs["samples_per_s"] = meter.count / seconds if seconds > 0 else float("inf")
    return logs


def _max_over_ranks(value):
    from gradflow import distributed
    t = Tensor(numpy.array([value], dtype=numpy.float64))
    distributed.all_reduce(t, distributed.ReduceOp.MAX)
    return float(t.numpy()[0])


def _is_distributed(model, loader):
    """True in a multi-process run where ``fit`` sees a DDP model or a DistributedSampler."""
    from gradflow import distributed
    from gradflow.data import DistributedSampler
    from gradflow.nn.parallel import DistributedDataParallel
    if not distributed.is_initialized() or distributed.get_world_size() == 1:
        return False
    return isinstance(model, DistributedDataParallel) or isinstance(getattr(loader, "sampler", None),
                                                                    DistributedSampler)


def evaluate(model, loader, loss_fn=None, distributed=False):
    """Mean loss (when ``loss_fn`` is given) and accuracy over ``loader``, in eval mode without gradients.

    ``distributed``: every rank evaluates its own ``loader``; the means are over all ranks' samples.
    """
    was_training = model.training
    model.eval()
    loss_sum, correct, count, classification = 0.0, 0, 0, False
    try:
        with no_grad():
            for batch in loader:
                x, y = _split(batch)
                output = model(x)
                n = y.shape[0]
                if loss_fn is not None:
                    loss_sum += float(loss_fn(output, y).data) * n
                if _is_classification(output, y):
                    classification = True
                    correct += int((predicted_classes(output) == y.data).sum())
                count += n
    finally:
        model.train(was_training)
    if distributed:
        from gradflow import distributed as dist
        sums = Tensor(numpy.array([loss_sum, correct, count, classification], dtype=numpy.float64))
        dist.all_reduce(sums)
        loss_sum, correct, count, classification = sums.numpy().tolist()
        count, classification = int(count), bool(classification)
    if count == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    logs = {}
    if loss_fn is not None:
        logs["loss"] = loss_sum / count
    if classification:
        logs["accuracy"] = correct / count
    return logs


def predict(model, data, batch_size=1024):
    """The model's outputs for a Tensor/array of inputs or for every batch of a loader, in eval mode."""
    was_training = model.training
    model.eval()
    outputs = []
    try:
        with no_grad():
            if isinstance(data, Tensor) or hasattr(data, "shape"):
                x = data if isinstance(data, Tensor) else Tensor(data)
                for start in range(0, x.shape[0], batch_size):
                    outputs.append(model(x[start:start + batch_size]).data)
            else:
                for batch in data:
                    x = batch[0] if isinstance(batch, (tuple, list)) else batch
                    outputs.append(model(x).data)
    finally:
        model.train(was_training)
    if not outputs:
        raise ValueError("predict: no inputs")
    return Tensor(backend.xp_of(outputs[0]).concatenate(outputs))


def fit(model, loss_fn, optimizer, train_loader, val_loader=None, epochs=1, callbacks=(), scheduler=None,
        progress=True, resume=None, clip_grad_norm=None, compile=False):
    """Train ``model`` for ``epochs`` epochs in total; returns the ``History``.

    ``scheduler`` (one or a list, LR or momentum schedules) is stepped once per epoch.
    ``resume`` is a checkpoint path: training continues after the epoch it recorded, with
    the same random streams, so the result matches an uninterrupted run. ``progress`` shows
    tqdm bars (loss and samples/s) and prints one summary line per epoch. ``compile=True``
    replays each batch's step through ``gradflow.compile`` (same results, less overhead).

    Distributed (``gradflow.distributed`` initialized with several ranks, and ``model`` a
    ``DistributedDataParallel`` or the loader's sampler a ``DistributedSampler``): every rank
    calls ``fit``; the sampler's epoch is set before each epoch, losses and accuracies are
    over all ranks' samples (so every rank logs the same numbers and callbacks decide the
    same), only rank 0 shows progress and writes checkpoints, and every rank resumes.
    """
    callbacks = list(callbacks)
    history = next((cb for cb in callbacks if isinstance(cb, History)), None)
    if history is None:
        history = History()
        callbacks.insert(0, history)
    run = TrainingRun(model, loss_fn, optimizer, train_loader, _as_list(scheduler), history, callbacks)
    distributed = _is_distributed(model, train_loader)
    if distributed:
        from gradflow import distributed as dist
        run.is_main = dist.get_rank() == 0
        progress = progress and run.is_main
    step = training_step(model, loss_fn, optimizer, clip_grad_norm)
    if compile:
        step = compile_step(step)
    if resume is not None:
        run.load_checkpoint(resume)
        _log(f"resumed from {resume} after epoch {run.epoch}", progress)
    for cb in callbacks:
        cb.on_train_begin(run)
    try:
        while run.epoch < epochs and not run.stop_training:
            epoch = run.epoch + 1
            if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
                train_loader.sampler.set_epoch(run.epoch)  # a new shuffle each epoch, the same on every rank
            logs = train_epoch(model, loss_fn, optimizer, train_loader, progress, f"epoch {epoch}/{epochs}",
                               step=step, distributed=distributed)
            logs["lr"] = optimizer.param_groups[0]["lr"]
            if val_loader is not None:
                logs.update({"val_" + k: v for k, v in evaluate(model, val_loader, loss_fn, distributed).items()})
            for s in run.schedulers:
                s.step()
            run.epoch = epoch
            _log(_summary(epoch, epochs, logs), progress)
            for cb in callbacks:
                cb.on_epoch_end(run, epoch, logs)
    finally:
        for cb in callbacks:
            cb.on_train_end(run)
    return history


def _summary(epoch, epochs, logs):
    parts = [f"epoch {epoch}/{epochs}"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if key in logs:
            value = logs[key]
            parts.append(f"{key} {value * 100:.2f}%" if "accuracy" in key else f"{key} {value:.4f}")
    parts.append(f"lr {logs['lr']:.3g}")
    parts.append(f"{logs['samples_per_s']:,.0f} samples/s")
    parts.append(f"{logs['time']:.1f}s")
    return " | ".join(parts)


__all__ = ["Callback", "EarlyStopping", "History", "ModelCheckpoint", "TrainingRun", "evaluate", "fit",
           "load_checkpoint", "predict", "save_checkpoint", "train_epoch"]
