"""Several processes, one run: torch.distributed on the CPU (gloo), started by `train --processes N` or by
two torchrun invocations as two machines would, against the same run in one process.

Training amplifies rounding: one process on one thread and on two already ends an epoch of seed-mnist
0.02 apart (summing a batch's gradient in another order changes the last bits, and RMSprop's steps on
near-zero gradients turn those bits into whole steps). So the runs are compared over their first
steps, where only rounding separates them; benchmarks/distributed_parity.py measures whole epochs."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import smallvision as sv

BN_LAYERS = ("Input(shape=(28, 28, 1)) Conv2D(8, 3, padding='same') BatchNormalization() Activation('relu') "
             "MaxPooling2D(2) Conv2D(16, 3) BatchNormalization() Activation('relu') GlobalAveragePooling2D() "
             "Dense(10, activation='softmax')")
ENVIRONMENT = {**os.environ, "SMALLVISION_PROGRESS": "0", "OMP_NUM_THREADS": "1"}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "smallvision", "train", *args, "--quiet"]


def train_one_process(*args: str) -> None:
    """`smallvision train ARGS` as one process on one thread (each process of a run of several has one, as
    ENVIRONMENT says), here rather than in a new Python that would import PyTorch again."""
    from smallvision.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", *args, "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)


def largest_difference(one: Path, other: Path) -> float:
    a, b = load_file(str(one / "model.safetensors")), load_file(str(other / "model.safetensors"))
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.parametrize("network", ["seed-mnist, augmented", "batch norm, SGD"])
def test_two_processes_train_the_run_one_process_trains(mnist_slice, tmp_path, network):
    options = ["--epochs", "1", "--steps-per-epoch", "10", "--precision", "fp32", "--set", "rotation_range=15",
               "--set", "width_shift_range=0.1", "--val-split", "0.1"]
    bound = 1e-6
    if network.startswith("batch norm"):
        # SyncBatchNorm's statistics, with SGD, whose steps scale with the gradients. A batch-norm network
        # magnifies rounding: one process on 1 and on 2 threads is 8e-6 apart after one step, 2e-5 after three,
        # and two processes land as close (the statistics of each half alone would be 1e-3 away).
        options += ["--layers", BN_LAYERS, "--optimizer", "sgd", "--lr", "0.05", "--steps-per-epoch", "2"]
        bound = 1e-4
    train_one_process(str(mnist_slice), *options, "--out", str(tmp_path / "one"))
    scratch = tmp_path / "tmp"  # the launcher's temporary directory, not the machine's /tmp
    scratch.mkdir()
    subprocess.run(cli(str(mnist_slice), *options, "--out", str(tmp_path / "two"), "--processes", "2"),
                   env={**ENVIRONMENT, "TMPDIR": str(scratch)}, check=True)
    # torchrun's log directory (before, a torchelastic_* left behind by every run) went with the run
    assert not [entry.name for entry in scratch.iterdir() if "torchelastic" in entry.name or "torchrun" in entry.name]
    assert largest_difference(tmp_path / "one", tmp_path / "two") <= bound
    one, two = sv.load_run(tmp_path / "one").metrics, sv.load_run(tmp_path / "two").metrics
    assert two["processes"] == 2 and "processes" not in one
    assert abs(one["val_accuracy"] - two["val_accuracy"]) <= 0.002  # validation split across the processes, summed
    assert abs(one["test_accuracy"] - two["test_accuracy"]) <= 0.002
    assert not list((tmp_path / "two").glob(".partial-*")) and not (tmp_path / "two" / "checkpoint.safetensors").exists()


def free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


def test_two_machines_simulated_on_loopback_train_the_one_process_run(mnist_slice, tmp_path):
    options = ["--epochs", "1", "--steps-per-epoch", "6", "--precision", "fp32"]
    train_one_process(str(mnist_slice), *options, "--out", str(tmp_path / "one"))
    port = free_port()
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                               "--node-rank", str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
                               "--log-dir", str(tmp_path / f"logs-{rank}"),  # not a torchelastic_* left in /tmp
                               "-m", "smallvision", "train", str(mnist_slice), *options, "--quiet",
                               "--out", str(tmp_path / "two")], env=ENVIRONMENT, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    for node in nodes:
        _, stderr = node.communicate(timeout=300)
        assert node.returncode == 0, stderr[-3000:]
    assert largest_difference(tmp_path / "one", tmp_path / "two") <= 1e-6
    assert sv.load_run(tmp_path / "two").metrics["processes"] == 2


def test_a_machine_that_cannot_reach_the_rendezvous_says_so_in_one_line(mnist_slice, tmp_path):
    port = free_port()  # nobody listens there: node 0 was never started
    began = time.monotonic()
    result = subprocess.run(cli(str(mnist_slice), "--out", str(tmp_path / "run"), "--nodes", "2", "--node-rank", "1",
                                "--rendezvous", f"127.0.0.1:{port}", "--rendezvous-timeout", "2"),
                            env=ENVIRONMENT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"smallvision: error: could not meet the other machines at "
                                                   f"127.0.0.1:{port}"), result.stderr[-2000:]
    assert time.monotonic() - began < 60  # bounded by the timeout asked for, not torchrun's 600 s
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, said", [
    (["--nodes", "2", "--rendezvous", "nohost"], "--rendezvous 'nohost': give HOST:PORT"),
    (["--nodes", "2"], "--nodes 2 needs --rendezvous HOST:PORT"),
    (["--nodes", "2", "--node-rank", "2", "--rendezvous", "127.0.0.1:1"], "--node-rank 2: with --nodes 2 it must be 0 to 1"),
])
def test_bad_machine_flags_are_one_line(mnist_slice, tmp_path, flags, said):
    result = subprocess.run(cli(str(mnist_slice), "--out", str(tmp_path / "run"), *flags), env=ENVIRONMENT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and said in result.stderr


def test_a_failing_process_stops_the_others(mnist_slice, tmp_path):
    out = tmp_path / "run"
    launcher = subprocess.Popen(cli(str(mnist_slice), "--epochs", "50", "--precision", "fp32", "--out", str(out),
                                    "--processes", "2"), env=ENVIRONMENT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    worker = None
    while worker is None and time.monotonic() < deadline and launcher.poll() is None:
        worker = rank_process(1, str(out)) if (out / "checkpoint.safetensors").exists() else None
        time.sleep(0.1)
    assert worker is not None, "the second process never started training"
    os.kill(worker, signal.SIGKILL)  # as a crash, or the machine under it going away
    _, stderr = launcher.communicate(timeout=120)  # the others stop: no hang
    assert launcher.returncode != 0
    assert rank_process(0, str(out)) is None
    assert (out / "checkpoint.safetensors").is_file()  # what rank 0 wrote is there to --resume


def rank_process(rank: int, marker: str) -> int | None:
    """The pid of the worker with this RANK whose command line names `marker`, if it runs."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in command and f"RANK={rank}".encode() in environment and b"-m\x00smallvision\x00" in command:
            return int(entry.name)
    return None


def test_more_gpus_than_the_machine_has_is_one_line(mnist_slice, tmp_path):
    result = subprocess.run(cli(str(mnist_slice), "--gpus", str(torch.cuda.device_count() + 1), "--out",
                                str(tmp_path / "run")), env=ENVIRONMENT, capture_output=True, text=True)
    assert result.returncode == 2
    count = torch.cuda.device_count()
    assert result.stderr.strip().splitlines() == [f"smallvision: error: --gpus {count + 1}: this machine has {count} GPU"
                                                  f"{'' if count == 1 else 's'}"
                                                  f"{'; leave --gpus out to train on the CPU' if count == 0 else ''}"]


def test_an_error_in_every_process_is_said_once_with_status_2(mnist_slice, tmp_path):
    result = subprocess.run(cli(str(mnist_slice), "--model", "small_resnet", "--processes", "2", "--out",
                                str(tmp_path / "run")), env=ENVIRONMENT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"smallvision: error: small_resnet takes 3-channel images; "
                                                  f"{mnist_slice} has 1 channels"]


def torchrun_report(*failures: int) -> bytes:
    """torchrun's closing report as it prints it: the other failures, then the root cause, last."""
    entries = [f"[{i}]:\n  time      : 2026-12-01_14:00:00\n  rank      : {i} (local_rank: {i})\n"
               f"  exitcode  : {code} (pid: {100 + i})\n  traceback : To enable traceback see: ...\n"
               for i, code in enumerate(failures)]
    return ("Traceback (most recent call last):\n  File \"/x/torch/distributed/run.py\", line 1, in main\n"
            "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
            "============================================================\nsmallvision.cli FAILED\n"
            "------------------------------------------------------------\nFailures:\n"
            + ("".join(entries[:-1]) or "  <NO_OTHER_FAILURES>\n")
            + "------------------------------------------------------------\nRoot Cause (first observed failure):\n"
            + entries[-1] + "============================================================\n").encode()


@pytest.mark.parametrize("failures, status", [((2,), 2), ((-15, 2), 2), ((2, -15), 2), ((-15, -15), 143),
                                              ((-2,), 130)])
def test_the_launcher_answers_with_a_process_own_status_not_torchruns_sigterm(capsys, failures, status):
    from smallvision.launcher import LauncherReport
    report = LauncherReport()
    report.feed(b"smallvision: error: something\n" + torchrun_report(*failures), final=True)
    assert report.exit_code == status
    assert capsys.readouterr().err == "smallvision: error: something\n"  # the report itself not shown


def test_a_run_of_two_processes_stopped_by_ctrl_c_resumes_to_the_same_weights(mnist_slice, tmp_path):
    # stopped as soon as its first epoch's checkpoint appears: the other 39 epochs (4 s, more on a busier
    # machine) are far longer than the test takes to see the file and press Ctrl-C
    options = ["--epochs", "40", "--steps-per-epoch", "5", "--batch-size", "32", "--precision", "fp32",
               "--processes", "2"]
    subprocess.run(cli(str(mnist_slice), *options, "--out", str(tmp_path / "whole")), env=ENVIRONMENT, check=True)
    out = tmp_path / "stopped"
    launcher = subprocess.Popen(cli(str(mnist_slice), *options, "--out", str(out)), env=ENVIRONMENT,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.safetensors").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(launcher.pid, signal.SIGINT)  # Ctrl-C in a terminal: every process of the group gets it
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode == 130, stderr
    assert f"smallvision train --resume {out} --processes 2" in stderr and stderr.count("stopped by SIGINT") == 1
    subprocess.run(cli("--resume", str(out), "--processes", "2"), env=ENVIRONMENT, check=True)
    whole, resumed = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)
