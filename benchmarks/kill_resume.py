"""Benchmark: kill -9 a short training at random moments, resume it each time, and compare the end.

A slice of MNIST (10,000 training images, 10% held out for validation), seed-mnist for 3 epochs with
a checkpoint at every progress refresh (--set checkpoint_minutes=0.001), once uninterrupted, then N
times killed with SIGKILL at a random moment and resumed with `train --resume` to the end. Each
time the final weights are compared with the uninterrupted run's: equal bit for bit, or the largest
difference. Also: the share of seed-mnist's training time (full MNIST, 5
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


def killed_and_resumed(source: Path, out: Path, precision: str, duration: float, rng: random.Random) -> float:
    """Train, kill -9 at a random moment, then `--resume` to the end; the moment of the kill (seconds)."""
    env = {**os.environ, "SMALLVISION_PROGRESS": "0"}
    first = command(str(source), "--epochs", "3", "--val-split", "0.1", "--precision", precision,
                    "--set", "checkpoint_minutes=0.001", "--out", str(out), "--force")
    while True:
        moment = rng.uniform(0.5, 0.95 * duration)
        process = subprocess.Popen(first, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            process.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            break  # killed: now resume it
        # it finished before the moment came: draw again
    if not (out / "training.json").is_file():  # killed before the run had begun: start it again
        subprocess.run(first, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return moment
    resumed = subprocess.run(command("--resume", str(out)), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    if resumed.returncode and "this run finished" not in resumed.stderr:  # killed after its last write: done
        raise SystemExit(f"the resume failed ({resumed.returncode}): {resumed.stderr[-2000:]}")
    return moment


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
        training = sv.train("mnist", "seed-mnist", data=MNIST, out=Path(scratch) / "run", progress=False).metrics
    workflow.Checkpointer.save = original
    return spent["seconds"], training["train_seconds"], spent["writes"]


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
            reference = load_file(str(whole / "model.safetensors"))
            trials = []
            for trial in range(args.kills):
                pieces = scratch / f"killed-{precision}"
                moment = killed_and_resumed(source, pieces, precision, duration, rng)
                resumed = load_file(str(pieces / "model.safetensors"))
                equal = all(torch.equal(reference[k], resumed[k]) for k in reference)
                largest = max(float((reference[k].float() - resumed[k].float()).abs().max()) for k in reference)
                trials.append({"killed_at": moment, "bit_for_bit": equal, "max_abs_difference": largest})
                print(f"{precision} trial {trial + 1}: killed at {moment:.1f} s, resumed to the end: final weights "
                      f"{'equal bit for bit' if equal else f'differ by at most {largest:.3g}'}", flush=True)
            if not trials:
                continue
            exact = sum(t["bit_for_bit"] for t in trials)
            summary[precision] = {"trials": trials, "uninterrupted_seconds": duration}
            print(f"{precision}: {exact} of {len(trials)} killed-and-resumed runs end with the uninterrupted weights "
                  f"bit for bit; largest difference {max(t['max_abs_difference'] for t in trials):.3g} "
                  f"(the uninterrupted command: {duration:.1f} s)", flush=True)
    seconds, training, writes = checkpoint_share()
    summary["checkpoint_cost"] = {"seconds": seconds, "train_seconds": training, "writes": writes}
    print(f"seed-mnist, full MNIST: {writes} checkpoints took {seconds:.3f} s of {training:.1f} s of training: "
          f"{seconds / training:.2%} (bar 3%)")
    save_results("kill_resume", summary)


if __name__ == "__main__":
    main()
