"""Benchmark: kill -9 a short training at random moments, resume it each time, and compare the end.

A slice of MNIST (10,000 training images, 10% held out for validation), seed-mnist for 3 epochs with
a checkpoint at every progress refresh (--set checkpoint_minutes=0.001), once uninterrupted, then N
times killed with SIGKILL at a random moment and resumed with `train --resume` to the end. Each
time the final weights are compared with the uninterrupted run's: equal bit for bit, or the largest
difference. Also: the share of seed-mnist's training time (full MNIST, 5
epochs) spent writing its checkpoints, measured in the same process, and the same run without
checkpoints for comparison (on a noisy machine the direct timing is the sharper figure).

With --finetune: catsdogs-finetune on the shared cats-vs-dogs photos, trained three times: whole with
checkpoints (their writing timed), whole without, and once stopped by one SIGINT at a random moment of
stage two's second epoch, then resumed with `train --resume`; the final weights compared with the
whole run's.

    .venv/bin/python benchmarks/kill_resume.py [--kills 20] [--precisions fp32 bf16] [--finetune]
"""

import argparse
import os
import random
import re
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
CATSDOGS = ROOT.parent / "shared" / "datasets" / "cats_and_dogs_small"


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


def checkpoint_share(source: str, recipe: str, out: Path, checkpoints: bool = True) -> dict:
    """Train in this process; the seconds spent writing checkpoints (none written without `checkpoints`),
    the training seconds and the number of writes."""
    import smallvision as sv
    from smallvision import workflow

    spent = {"seconds": 0.0, "writes": 0}
    original = workflow.Checkpointer.save

    def timed(self, loop):
        started = time.perf_counter()
        if checkpoints:
            original(self, loop)
            spent["writes"] += 1
        spent["seconds"] += time.perf_counter() - started

    workflow.Checkpointer.save = timed
    try:
        training = sv.train(source, recipe, data=MNIST if source == "mnist" else None, out=out, progress=False).metrics
    finally:
        workflow.Checkpointer.save = original
    return {**spent, "train_seconds": training["train_seconds"], "test_accuracy": training["test_accuracy"]}


def with_and_without(source: str, recipe: str, scratch: Path) -> dict:
    """The checkpoint cost of one recipe, both ways: the writes timed, and a run without any."""
    timed = checkpoint_share(source, recipe, scratch / f"{recipe}-with")
    without = checkpoint_share(source, recipe, scratch / f"{recipe}-without", checkpoints=False)
    share = timed["seconds"] / timed["train_seconds"]
    ratio = timed["train_seconds"] / without["train_seconds"]
    print(f"{recipe}: {timed['writes']} checkpoints took {timed['seconds']:.2f} s of {timed['train_seconds']:.1f} s "
          f"of training: {share:.2%} (bar 3%); the same run without checkpoints trained in "
          f"{without['train_seconds']:.1f} s: with/without = {ratio:.3f}x", flush=True)
    return {"with": timed, "without": without, "share": share, "ratio": ratio}


def stopped_in_stage_two(source: Path, out: Path, rng: random.Random) -> dict:
    """catsdogs-finetune stopped by one SIGINT at a random moment of stage two's second epoch, then resumed."""
    env = {**os.environ, "SMALLVISION_PROGRESS": "0"}
    verbose = [sys.executable, "-m", "smallvision.cli", "train", str(source), "--recipe", "catsdogs-finetune",
               "--out", str(out)]  # not --quiet: the epochs' lines say when stage two has begun
    process = subprocess.Popen(verbose, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tuning_epochs = None
    for line in process.stdout:  # stage one's epochs print as "epoch k/4", stage two's as "epoch k/6"
        if line.startswith("epoch 1/6 "):
            epoch_seconds = float(re.search(r"  ([0-9.]+)s  ", line).group(1))
            moment = rng.uniform(0.1, 0.9) * epoch_seconds
            time.sleep(moment)
            process.send_signal(signal.SIGINT)
            tuning_epochs = 6
            break
    _, stderr = process.communicate()
    if process.returncode != 130 or tuning_epochs is None:
        raise SystemExit(f"the stop did not go as planned ({process.returncode}): {stderr[-2000:]}")
    from smallvision.checkpoint import read_checkpoint

    header, _ = read_checkpoint(out)
    stopped = {"moment_into_epoch_2": moment, "stage": header["context"]["stage"], "step": header["step"],
               "epochs_done": header["epoch"], "message": stderr.strip().splitlines()[-2:]}
    print(f"catsdogs-finetune: SIGINT {moment:.1f} s into stage two's epoch 2: exit 130, checkpoint of stage "
          f"{stopped['stage']} at step {stopped['step']} ({stopped['epochs_done']} epoch done)", flush=True)
    resumed = subprocess.run(command("--resume", str(out)), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    if resumed.returncode:
        raise SystemExit(f"the resume failed ({resumed.returncode}): {resumed.stderr[-2000:]}")
    return stopped


def finetune(scratch: Path, rng: random.Random) -> dict:
    cost = with_and_without(str(CATSDOGS), "catsdogs-finetune", scratch)
    stopped = stopped_in_stage_two(CATSDOGS, scratch / "finetune-stopped", rng)
    reference = load_file(str(scratch / "catsdogs-finetune-with" / "model.safetensors"))
    resumed = load_file(str(scratch / "finetune-stopped" / "model.safetensors"))
    equal = all(torch.equal(reference[k], resumed[k]) for k in reference)
    largest = max(float((reference[k].float() - resumed[k].float()).abs().max()) for k in reference)
    print(f"catsdogs-finetune stopped in stage two and resumed: final weights "
          f"{'equal the uninterrupted run bit for bit' if equal else f'differ by at most {largest:.3g}'}", flush=True)
    return {"cost": cost, "stopped": stopped, "bit_for_bit": equal, "max_abs_difference": largest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finetune", action="store_true", help="also catsdogs-finetune: cost and a stage-two SIGINT")
    parser.add_argument("--no-mnist-cost", action="store_true", help="skip seed-mnist's checkpoint cost")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    summary = {}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        source = make_slice(scratch / "slice")
        for precision in args.precisions if args.kills else []:
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
        if not args.no_mnist_cost:
            summary["seed-mnist cost"] = with_and_without("mnist", "seed-mnist", scratch)
        if args.finetune:
            summary["catsdogs-finetune"] = finetune(scratch, rng)
    save_results("kill_resume", summary)


if __name__ == "__main__":
    main()
