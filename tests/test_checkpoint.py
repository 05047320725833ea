"""Never lose work: the checkpoint is the loop's state, a resumed run ends where the uninterrupted one
does, a stop on request leaves a checkpoint, a NaN stops the run, and files are written whole."""

import csv
import importlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import smallvision as sv
from smallvision import workflow
from smallvision.checkpoint import NAME, read_checkpoint
from smallvision.errors import SmallvisionError, TrainingStopped
from smallvision.files import write_atomically

from conftest import write_idx_source

train_module = importlib.import_module("smallvision.train")  # the module, not sv.train the function

# Dropout (the global generator) and augmentation (the loop's own generator) both draw random numbers,
# so a resume that lost either would not end where the uninterrupted run does.
LAYERS = "Conv2D(8, 3, activation='relu') MaxPooling2D(2) Flatten() Dropout(0.3) Dense(10, activation='softmax')"
SETTINGS = dict(epochs=3, batch_size=32, val_split=0.1, precision="fp32", rotation_range=10.0, layers=LAYERS,
                optimizer="adamw", schedule="onecycle", progress=False)


def weights(run) -> dict:
    return {name: tensor.clone() for name, tensor in run.model.state_dict().items()}


@pytest.fixture(scope="module")
def uninterrupted(mnist_slice, tmp_path_factory):
    return sv.train(mnist_slice, "seed-mnist", out=tmp_path_factory.mktemp("whole") / "run", **SETTINGS)


def stop_at(monkeypatch, hook: str, when) -> None:
    """Ask the loop to stop, as a signal would, from a Checkpointer hook once `when(loop)` holds."""
    original = getattr(workflow.Checkpointer, hook)

    def stopping(self, loop):
        original(self, loop)
        if when(loop):
            loop.stop_requested = "SIGINT"

    monkeypatch.setattr(workflow.Checkpointer, hook, stopping)


@pytest.mark.parametrize("where", ["mid-epoch", "epoch boundary"])
def test_a_resumed_run_ends_with_the_uninterrupted_weights(uninterrupted, mnist_slice, tmp_path, monkeypatch, where):
    options = dict(SETTINGS)
    if where == "mid-epoch":  # a checkpoint at every progress refresh, as a long epoch gets every few minutes
        stop_at(monkeypatch, "on_batch_end", lambda loop: loop.state.step == 50)
        options["checkpoint_minutes"] = 1e-9
    else:
        stop_at(monkeypatch, "on_epoch_end", lambda loop: loop.state.epoch == 1)
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped) as stopped:
        sv.train(mnist_slice, "seed-mnist", out=out, **options)
    assert stopped.value.directory == out and (out / NAME).is_file() and not (out / "model.json").exists()
    header, _ = read_checkpoint(out)
    assert header["step"] == (50 if where == "mid-epoch" else 57) and header["epoch"] == (0 if where == "mid-epoch" else 1)
    monkeypatch.undo()
    resumed = sv.train(resume=out, progress=False)
    for name, tensor in weights(uninterrupted).items():
        assert torch.equal(tensor, weights(resumed)[name]), name  # bit for bit, in fp32
    assert resumed.metrics["test_accuracy"] == uninterrupted.metrics["test_accuracy"]
    assert history_without_times(resumed) == history_without_times(uninterrupted)  # losses, accuracies and learning rates of every epoch, as if never stopped
    assert not (out / NAME).exists()  # a finished run removes its checkpoint
    with pytest.raises(SmallvisionError, match="this run finished; there is nothing to resume"):
        sv.train(resume=out, progress=False)


def history_without_times(run) -> list[dict]:
    with open(run.path / "history.csv") as handle:
        return [{k: v for k, v in row.items() if "seconds" not in k} for row in csv.DictReader(handle)]


def test_resuming_on_changed_data_is_refused_naming_the_split(mnist_slice, tmp_path, monkeypatch):
    source = write_idx_source(tmp_path / "digits", *(np.array(a) for a in _slice_arrays(mnist_slice)))
    stop_at(monkeypatch, "on_epoch_end", lambda loop: True)
    with pytest.raises(TrainingStopped):
        sv.train(source, "seed-mnist", out=tmp_path / "run", **SETTINGS)
    monkeypatch.undo()
    arrays = _slice_arrays(source)
    arrays[0][0] = 255 - arrays[0][0]  # one training image changed
    write_idx_source(source, *arrays)
    with pytest.raises(SmallvisionError, match="split changed since .* start a new run"):
        sv.train(resume=tmp_path / "run", progress=False)
    with pytest.raises(SmallvisionError, match="keeps its own source and recipe; leave out a source, epochs"):
        sv.train(source, resume=tmp_path / "run", epochs=9)


def _slice_arrays(folder):
    from smallvision.data.idx import read_idx

    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte"]
    return [read_idx(folder / name).copy() for name in names]


def test_a_nan_stops_the_run_and_keeps_the_last_good_checkpoint(mnist_slice, tmp_path, monkeypatch):
    calls = {"n": 0}
    original = train_module.cross_entropy

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 70 else loss

    monkeypatch.setattr(train_module, "cross_entropy", poisoned)
    out = tmp_path / "run"
    with pytest.raises(SmallvisionError, match=r"NaN or infinite at step 71 \(epoch 2, batch 14 of 57\).*--lr"):
        sv.train(mnist_slice, "seed-mnist", out=out, **SETTINGS)
    header, tensors = read_checkpoint(out)  # written after epoch 1, before the loss went bad
    assert header["epoch"] == 1 and all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model."))


def test_sigint_in_a_subprocess_leaves_a_checkpoint_and_exit_130(mnist_slice, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "smallvision.cli", "train", str(mnist_slice), "--epochs", "40", "--out", str(out),
               "--quiet", "--precision", "fp32"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "SMALLVISION_PROGRESS": "0"})
    deadline = time.monotonic() + 120
    while not (out / NAME).exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert f"smallvision train --resume {out}" in stderr and "Traceback" not in stderr
    header, _ = read_checkpoint(out)
    assert 1 <= header["epoch"] < 40 and not (out / "model.json").exists()


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("the previous checkpoint")

    def half_then_full_disk(temporary):
        temporary.write_text("half a")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_atomically(path, half_then_full_disk)
    assert path.read_text() == "the previous checkpoint" and [p.name for p in tmp_path.iterdir()] == ["state.json"]
