"""The training loop as an object: its events, a stop from another thread, live figures, progress that fits
where it goes, and histories joined by one method."""

import dataclasses
import math
import os
import subprocess
import sys
import threading

import pytest
import torch

import smallvision as sv
from smallvision.callbacks import Callback
from smallvision.checkpoint import read_checkpoint
from smallvision.errors import TrainingStopped
from smallvision.loop import History

LAYERS = "Conv2D(4, 3, activation='relu') MaxPooling2D(2) Flatten() Dense(3, activation='softmax')"
SMALL = dict(layers=LAYERS, batch_size=20, precision="fp32", device="cpu", progress="off")  # 60 images: 3 batches


class Recorder(Callback):
    """Every event, in order, with the loop's live figures at each epoch's end."""

    def __init__(self):
        self.events, self.live = [], []

    def on_train_begin(self, loop):
        self.events.append("train_begin")

    def on_epoch_begin(self, loop):
        self.events.append(f"epoch_begin {loop.live.epoch}")

    def on_batch_end(self, loop):
        self.events.append(f"batch_end {loop.state.step}")

    def on_epoch_end(self, loop):
        self.events.append(f"epoch_end {loop.state.epoch}")
        self.live.append(dataclasses.replace(loop.live))

    def on_train_end(self, loop):
        self.events.append("train_end")

    def on_stop(self, loop):
        self.events.append(f"stop {loop.state.step}")


def test_a_users_callback_sees_every_event_in_order_once(tiny_source, tmp_path):
    recorder = Recorder()
    run = sv.train(tiny_source, "seed-mnist", out=tmp_path / "run", epochs=2, callbacks=[recorder], **SMALL)
    assert recorder.events == ["train_begin",
                               "epoch_begin 1", "batch_end 1", "batch_end 2", "batch_end 3", "epoch_end 1",
                               "epoch_begin 2", "batch_end 4", "batch_end 5", "batch_end 6", "epoch_end 2",
                               "train_end"]
    first, second = recorder.live
    assert (first.epoch, first.batch, first.step, second.step, second.total_steps) == (1, 3, 3, 6, 6)
    assert all(math.isfinite(live.loss) and 0 <= live.accuracy <= 1 and live.images_per_second > 0 for live in
               recorder.live)
    assert second.eta_seconds == 0  # read at the last step
    assert run.metrics["epochs"] == 2


class StopFromAnotherThread(Callback):
    """A web page's Stop button: after batch `after`, another thread asks the loop to stop."""

    def __init__(self, after: int):
        self.after = after

    def on_batch_end(self, loop):
        if loop.state.step == self.after:
            button = threading.Thread(target=loop.request_stop, args=("the Stop button",))
            button.start()
            button.join()


@pytest.mark.parametrize("after", [2, 4])  # inside the first epoch, and inside the second
def test_a_stop_from_another_thread_stops_after_that_batch_with_a_checkpoint(tiny_source, tmp_path, after):
    recorder = Recorder()
    with pytest.raises(TrainingStopped) as stopped:
        sv.train(tiny_source, "seed-mnist", out=tmp_path / "run", epochs=2,
                 callbacks=[StopFromAnotherThread(after), recorder], **SMALL)
    assert str(stopped.value) == "the Stop button" and stopped.value.directory == tmp_path / "run"
    assert recorder.events[-2:] == [f"batch_end {after}", f"stop {after}"]
    assert "train_end" not in recorder.events
    header, _ = read_checkpoint(tmp_path / "run")
    assert header["step"] == after and header["epoch"] == (after - 1) // 3
    resumed = sv.resume(tmp_path / "run", progress="off")
    assert resumed.metrics["epochs"] == 2 and not (tmp_path / "run" / "checkpoint.safetensors").exists()
    assert len((tmp_path / "run" / "history.csv").read_text().splitlines()) == 1 + 2


UNSILENCED = {name: value for name, value in os.environ.items() if name != "SMALLVISION_PROGRESS"}  # conftest's


def test_piped_progress_is_one_line_per_epoch(tiny_source, tmp_path):
    """Into a pipe or a file, as Keras' verbose=2: an epoch's line, and no progress bar's redraws."""
    done = subprocess.run([sys.executable, "-m", "smallvision", "train", str(tiny_source), "--recipe", "seed-mnist",
                           "--layers", LAYERS, "--epochs", "3", "--batch-size", "20", "--precision", "fp32",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300, env=UNSILENCED)
    assert done.returncode == 0, done.stderr
    epoch_lines = [line for line in done.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == ["1/3", "2/3", "3/3"]
    assert "\r" not in done.stdout + done.stderr and "batch/s" not in done.stderr and "it/s" not in done.stderr
    assert len(done.stdout.splitlines()) == 6  # what it trains, three epochs, the result, the run's directory


def test_verbose_draws_the_bar_even_into_a_pipe(tiny_source, tmp_path):
    done = subprocess.run([sys.executable, "-m", "smallvision", "train", str(tiny_source), "--recipe", "seed-mnist",
                           "--layers", LAYERS, "--epochs", "1", "--batch-size", "20", "--precision", "fp32",
                           "--out", str(tmp_path / "run"), "--verbose"], capture_output=True, text=True, timeout=300,
                          env=UNSILENCED)
    assert done.returncode == 0, done.stderr
    assert "epoch 1/1:" in done.stderr and "batch/s]" in done.stderr  # tqdm's bar


def test_histories_join_with_every_field_carried():
    first = History([{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}], train_seconds=2.0, images_seen=200,
                    features_seconds=3.0, compile_seconds=1.0)
    second = History([{"epoch": 1, "loss": 0.4}, {"epoch": 2, "loss": 0.3}], train_seconds=4.0, images_seen=100,
                     compile_seconds=0.5, kept={"epoch": 1, "val_loss": 0.2}, stopped_early=2)
    joined = first.then(second, stage=2)
    assert [row["epoch"] for row in joined.epochs] == [1, 2, 3, 4]
    assert [row.get("stage") for row in joined.epochs] == [None, None, 2, 2]
    assert (joined.train_seconds, joined.images_seen, joined.features_seconds, joined.compile_seconds) == (6.0, 300, 3.0,
                                                                                                            1.5)
    assert joined.kept == {"epoch": 3, "val_loss": 0.2} and joined.stopped_early == 4
    assert second.kept == {"epoch": 1, "val_loss": 0.2}  # the parts are left as they were


def test_a_history_field_without_a_joining_rule_is_an_error():
    @dataclasses.dataclass
    class Longer(History):
        calibration: float = 0.0

    with pytest.raises(TypeError, match="calibration"):
        Longer().then(Longer())


def test_the_loop_runs_without_a_run_directory(tiny_source):
    """`Loop` is usable on its own, as Keras' model.fit: a network, a split, a recipe."""
    from smallvision.data import open_source
    from smallvision.loop import Loop
    from smallvision.models import build_network
    from smallvision.models.layer_text import parse_layers

    data = open_source(tiny_source, progress=False)
    model = build_network(parse_layers(LAYERS), (1, 28, 28), 3)
    recorder = Recorder()
    loop = Loop(model, data.train, sv.load_recipe("seed-mnist").replace(epochs=1, batch_size=20, precision="fp32"),
                data.test, device=torch.device("cpu"), callbacks=[recorder], progress="off")
    history = loop.fit()
    assert [row["epoch"] for row in history.epochs] == [1] and "val_accuracy" in history.epochs[0]
    assert recorder.events[0] == "train_begin" and recorder.events[-1] == "train_end"
