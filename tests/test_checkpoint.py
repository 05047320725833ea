"""Never lose work: the checkpoint is the loop's state, a resumed run ends where the uninterrupted one
does, a stop on request leaves a checkpoint, a NaN stops the run, and files are written whole."""

import csv
import importlib
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import smallvision as sv
from smallvision import workflow
from smallvision.checkpoint import NAME, read_checkpoint
from smallvision.errors import SmallvisionError, TrainingStopped
from smallvision.files import write_atomically
from smallvision.step import Refresh
from smallvision.run import training_lock

from conftest import make_image_folder, write_idx_source

loop_module = importlib.import_module("smallvision.loop")
step_module = importlib.import_module("smallvision.step")

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
        monkeypatch.setattr(Refresh, "SECONDS_QUIET", 0.0)  # a refresh after every batch
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
    resumed = sv.resume(out, progress=False)  # sv.train(resume=out) by its other name
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
    original = step_module.cross_entropy

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = original(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 70 else loss

    monkeypatch.setattr(step_module, "cross_entropy", poisoned)
    out = tmp_path / "run"
    with pytest.raises(SmallvisionError, match=r"NaN or infinite at step 71 \(epoch 2, batch 14 of 57\): training "
                                               r"stopped; .*run keeps its last checkpoint, with the last good weights; "
                                               r"try a lower learning rate.*--lr"):
        sv.train(mnist_slice, "seed-mnist", out=out, **SETTINGS)
    header, tensors = read_checkpoint(out)  # written after epoch 1, before the loss went bad
    assert header["epoch"] == 1 and all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model."))


def test_sigint_in_a_subprocess_leaves_a_checkpoint_and_exit_130(mnist_slice, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "smallvision", "train", str(mnist_slice), "--epochs", "40", "--out", str(out),
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


def scripted_validation(monkeypatch, losses: list[float]) -> list[dict]:
    """Validation that scores the epochs as `losses` says (accuracy 1 - loss), keeping the weights it saw."""
    scores, seen = iter(losses), []

    def scripted(model, data, *args, **kwargs):
        seen.append({name: tensor.detach().clone() for name, tensor in model.state_dict().items()})
        loss = next(scores)
        return SimpleNamespace(loss=loss, accuracy=1 - loss, outputs=None)

    monkeypatch.setattr(loop_module, "split_scores", scripted)
    return seen


@pytest.mark.parametrize("stopped", [False, True])
def test_early_stopping_restores_the_best_epochs_weights(mnist_slice, tmp_path, monkeypatch, stopped):
    # The best val_loss is epoch 2's; with a patience of 2, epochs 3 and 4 do no better and training ends there.
    seen = scripted_validation(monkeypatch, [0.5, 0.4, 0.45, 0.46, 0.1, 0.1, 0.1, 0.1])
    options = dict(SETTINGS, epochs=8, early_stopping_patience=2)
    out = tmp_path / "run"
    if stopped:  # interrupted after epoch 3: the checkpoint must carry the best weights and the count since
        original = workflow.Checkpointer.on_epoch_end

        def stop_after_three(self, loop):
            original(self, loop)
            if loop.state.epoch == 3:
                loop.stop_requested = "SIGINT"

        monkeypatch.setattr(workflow.Checkpointer, "on_epoch_end", stop_after_three)
        with pytest.raises(TrainingStopped):
            sv.train(mnist_slice, "seed-mnist", out=out, **options)
        header, tensors = read_checkpoint(out)
        assert header["best"] == {"epoch": 2, "value": 0.4} and header["waited"] == 1
        monkeypatch.setattr(workflow.Checkpointer, "on_epoch_end", original)
        run = sv.train(resume=out, progress=False)
    else:
        run = sv.train(mnist_slice, "seed-mnist", out=out, **options)
    assert len(seen) == 4 and run.metrics["stopped_early_after_epoch"] == 4
    assert run.metrics["kept_epoch"] == 2 and run.metrics["kept_by"] == "val_loss" and run.metrics["val_loss"] == 0.4
    assert [row["epoch"] for row in history_without_times(run)] == ["1", "2", "3", "4"]
    for name, tensor in seen[1].items():  # the weights epoch 2 was validated with
        assert torch.equal(run.model.state_dict()[name].cpu(), tensor.cpu()), name
    assert not torch.equal(seen[1][next(iter(seen[1]))], seen[3][next(iter(seen[3]))])  # and not the last epoch's


def test_keep_best_needs_a_validation_split(mnist_slice, tmp_path):
    with pytest.raises(SmallvisionError, match="keep_best = \"val_accuracy\" needs a validation split.*--val-split"):
        sv.train(mnist_slice, "seed-mnist", out=tmp_path / "run", **dict(SETTINGS, val_split=0.0, keep_best="val_accuracy"))
    assert not (tmp_path / "run").exists()


BACKBONE = dict(image_size=64, batch_size=8, precision="fp32", progress=False)
BACKBONE_CASES = {  # (recipe, its settings, the stage to stop in, after which of its epochs)
    "fine-tuning, stopped in stage two": ("catsdogs-finetune", dict(epochs=1, fine_tune_epochs=3), 2, 1),
    "fine-tuning, stopped in stage one": ("catsdogs-finetune", dict(epochs=2, fine_tune_epochs=1), 1, 1),
    "a head on features": ("catsdogs-features", dict(epochs=3), 1, 2),
}


@pytest.mark.parametrize("case", list(BACKBONE_CASES))
def test_a_backbone_run_resumes_in_the_stage_it_stopped_in(tmp_path, monkeypatch, case):
    recipe, settings, stage, epoch = BACKBONE_CASES[case]
    pets = make_image_folder(tmp_path / "pets", per_class=12)
    options = dict(BACKBONE, cache_dir=tmp_path / "cache", **settings)
    whole = sv.train(pets, recipe, out=tmp_path / "whole", **options)
    stop_at(monkeypatch, "on_epoch_end", lambda loop: loop.stage.number == stage and loop.state.epoch == epoch)
    out = tmp_path / "stopped"
    with pytest.raises(TrainingStopped):
        sv.train(pets, recipe, out=out, **options)
    header, _ = read_checkpoint(out)
    assert header["context"]["stage"] == stage and header["epoch"] == epoch
    monkeypatch.undo()
    resumed = sv.train(resume=out, progress=False, cache_dir=tmp_path / "cache")
    for name, tensor in weights(whole).items():
        assert torch.equal(tensor, weights(resumed)[name]), name
    assert history_without_times(resumed) == history_without_times(whole)
    assert resumed.metrics["test_accuracy"] == whole.metrics["test_accuracy"]


def test_a_second_training_into_the_same_directory_is_refused_while_the_first_runs(mnist_slice, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "smallvision", "train", str(mnist_slice), "--epochs", "40", "--out", str(out),
               "--quiet", "--precision", "fp32"]
    first = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "SMALLVISION_PROGRESS": "0"})
    try:
        deadline = time.monotonic() + 120
        while not (out / NAME).exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        for attempt in (dict(force=True), dict(resume=out)):  # a new run over it, and a resume of it, both refused
            with pytest.raises(SmallvisionError, match=rf"another training is writing this run now \(process {first.pid} "):
                sv.train(mnist_slice if "force" in attempt else None, "seed-mnist" if "force" in attempt else None,
                         out=out if "force" in attempt else None, progress=False, **attempt)
        assert (out / NAME).is_file()  # the refused attempts touched nothing of the first's
    finally:
        first.kill()  # as kill -9 would: the lock goes with the process
        first.wait()
    assert (out / ".training.lock").exists()  # left behind by the killed process, and no obstacle
    with training_lock(out):  # to a resume, which takes it first
        pass
    run = sv.train(mnist_slice, "seed-mnist", out=out, force=True, progress=False, epochs=1, precision="fp32")
    assert run.metrics["epochs"] == 1 and not (out / ".training.lock").exists()


@pytest.mark.parametrize("fault", [(28, "No space left on device"), (13, "Permission denied")])
def test_a_checkpoint_or_run_file_that_cannot_be_written_keeps_the_previous_checkpoint(mnist_slice, tmp_path,
                                                                                       monkeypatch, fault):
    checkpoint_module = importlib.import_module("smallvision.checkpoint")
    run_module = importlib.import_module("smallvision.run")
    real_save = checkpoint_module.save_file
    writes = {"n": 0}

    def failing_second_time(tensors, path, metadata=None):
        writes["n"] += 1
        if writes["n"] == 2:
            with open(path, "wb") as handle:
                handle.write(b"half a checkpoint")
            raise OSError(fault[0], fault[1])
        real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint_module, "save_file", failing_second_time)
    out = tmp_path / "run"
    with pytest.raises(SmallvisionError, match=f"checkpoint.safetensors: the checkpoint cannot be written \\({fault[1]}\\); "
                                               f"the previous one, if any, is intact"):
        sv.train(mnist_slice, "seed-mnist", out=out, **SETTINGS)
    header, _ = read_checkpoint(out)
    assert header["epoch"] == 1 and sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    monkeypatch.undo()

    # Then the run's own files fail after its last epoch: the last checkpoint holds everything, and a
    # resume writes them without training again.
    monkeypatch.setattr(run_module, "write_atomically", lambda path, write: (_ for _ in ()).throw(OSError(*fault)))
    with pytest.raises(SmallvisionError, match=f"the run's files cannot be written \\({fault[1]}\\); its last checkpoint is kept"):
        sv.train(resume=out, progress=False)
    assert read_checkpoint(out)[0]["epoch"] == 3 and not (out / "model.json").exists()
    monkeypatch.undo()
    run = sv.train(resume=out, progress=False)
    assert run.metrics["epochs"] == 3 and [row["epoch"] for row in history_without_times(run)] == ["1", "2", "3"]
