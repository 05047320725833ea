"""Benchmark: kill -9 a short training at random moments, resume it each time, and compare the end.

A slice of MNIST (10,000 training images, 10% held out for validation), seed-mnist for 3 epochs with
a checkpoint at every progress refresh (--set checkpoint_minutes=0.001), once uninterrupted and once
killed with SIGKILL at N random moments, each time resumed with `train --resume`, until a resume
runs to the end. Then the two runs' final weights are compared: equal bit for bit in fp32; in bf16
the largest difference is printed. Also: the share of seed-mnist's training time (full MNIST, 5
epochs) spent writing its checkpoints, measured in the same process.

    .venv/bin/python benchmarks/kill_resume.py [--kills 20] [--precisions fp32 bf16]
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from keras_baseline import ROOT, save_results

MNIST = ROOT.parent / "shared" / "datasets" / "mnist"


def make_slice(folder: Path) -> Path:
    from smallvision.data.idx import read_idx, write_idx

    folder.mkdir(parents=True)
    for name, count in (("train-images-idx3-ubyte.gz", 10000), ("train-labels-idx1-ubyte.gz", 10000),
                        ("t10k-images-idx3-ubyte.gz", 2000), ("t10k-labels-idx1-ubyte.gz", 2000)):
        write_idx(folder / name, read_idx(MNIST / name)[:count])
    return folder


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "smallvision.cli", "train", *args, "--quiet"]


def killed_and_resumed(source: Path, out: Path, precision: str, kills: int, duration: float, rng: random.Random):
    """Train, kill -9 at `kills` random moments (resuming after each), then let a resume finish."""
    env = {**os.environ, "SMALLVISION_PROGRESS": "0"}
    first = command(str(source), "--epochs", "3", "--val-split", "0.1", "--precision", precision,
                    "--set", "checkpoint_minutes=0.001", "--out", str(out))
    resume = command("--resume", str(out))
    done, attempts = 0, 0
    while True:
        process = subprocess.Popen(first if attempts == 0 else resume, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        attempts += 1
        if done < kills:
            try:
                process.wait(timeout=rng.uniform(0.5, duration))
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
                done += 1
                continue
        _, stderr = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"attempt {attempts} failed ({process.returncode}): {stderr[-2000:]}")
        return attempts, done


def checkpoint_share() -> tuple[float, float, int]:
    """(seconds writing checkpoints, training seconds, writes) for seed-mnist on full MNIST."""
    import smallvision as sv
    from smallvision import workflow

    spent = {"seconds": 0.0, "writes": 0}
    original = workflow.Checkpointer.save

    def timed(self, loop):
        started = time.perf_counter()
        original(self, loop)
        spent["seconds"] += time.perf_counter() - started
        spent["writes"] += 1

    workflow.Checkpointer.save = timed
    with tempfile.TemporaryDirectory() as scratch:
        run = sv.train("mnist", "seed-mnist", data=MNIST, out=Path(scratch) / "run", progress=False)
    workflow.Checkpointer.save = original
    return spent["seconds"], run.metrics["train_seconds"], spent["writes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    summary = {}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        source = make_slice(scratch / "slice")
        for precision in args.precisions:
            whole = scratch / f"whole-{precision}"
            started = time.perf_counter()
            subprocess.run(command(str(source), "--epochs", "3", "--val-split", "0.1", "--precision", precision,
                                   "--out", str(whole)), check=True, env={**os.environ, "SMALLVISION_PROGRESS": "0"})
            duration = time.perf_counter() - started
            pieces = scratch / f"killed-{precision}"
            attempts, kills = killed_and_resumed(source, pieces, precision, args.kills, duration, rng)
            a, b = load_file(str(whole / "model.safetensors")), load_file(str(pieces / "model.safetensors"))
            equal = all(torch.equal(a[k], b[k]) for k in a)
            largest = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
            summary[precision] = {"kills": kills, "attempts": attempts, "bit_for_bit": equal,
                                  "max_abs_difference": largest, "uninterrupted_seconds": duration}
            print(f"{precision}: {kills} kills with SIGKILL, {attempts} starts in all; final weights "
                  f"{'equal bit for bit' if equal else f'differ by at most {largest:.3g}'} "
                  f"(the uninterrupted command: {duration:.1f} s)", flush=True)
    seconds, training, writes = checkpoint_share()
    summary["checkpoint_cost"] = {"seconds": seconds, "train_seconds": training, "writes": writes}
    print(f"seed-mnist, full MNIST: {writes} checkpoints took {seconds:.3f} s of {training:.1f} s of training: "
          f"{seconds / training:.2%} (bar 3%)")
    save_results("kill_resume", summary)


if __name__ == "__main__":
    main()
