"""Benchmark: the recipes on a GPU (issue 15's figures, and issue 13's `--gpus 1` against plain `train`).

One command for a lent GPU machine. Each recipe is trained by the CLI as a whole process, once per seed and
per compile mode asked for; for each it prints the test accuracy (the mean over the seeds), the training
seconds, the compile seconds (`metrics.json`: `compile_seconds`, paid before training and not in it) and
the whole command's seconds, beside the figures recorded on the H200 before this work and the issue's bars.
Then, in this process, where a step's time goes for the MNIST recipes (wall time per step against the
kernels' time: how busy the GPU is), `report` on the fine-tuned run, timed, and `train --gpus 1` against
plain `train` (images per second).

    python3 benchmarks/gpu.py                                   # on the GPU machine, data in $SMALLVISION_DATA
    python3 benchmarks/gpu.py --modes off,reduce-overhead,max-autotune --seeds 0,1,2
    .venv/bin/python benchmarks/gpu.py --device cpu --quick     # here: that the script itself runs

`--quick` trains each recipe for a few steps only (a check of the script, not a measurement). Results also
go to benchmarks/results/gpu-TIME.json (or $OUT).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Measured on the lent H200 before this work (README, "On a GPU"): training seconds, test accuracy.
# (fast-mnist's was the seed's network at lr 6e-3; it trains mnist_slim at 1.5e-2 since 2026-12-07, not yet
# measured on a GPU.)
RECORDED = {"seed-mnist": (14.3, 0.9907), "fast-mnist": (4.0, 0.9919), "catsdogs": (41.0, 0.916),
            "catsdogs-finetune": (23.0, 0.983)}
# Issue 15's bars: (the most training seconds, the least mean test accuracy)
BARS = {"seed-mnist": (3.0, None), "fast-mnist": (1.0, 0.992), "catsdogs": (15.0, 0.92),
        "catsdogs-finetune": (8.0, 0.98)}
REPORT_BAR = 10.0


def data_root() -> Path:
    """$SMALLVISION_DATA, else the checkout's .device-data/ (prepare_device.sh), else ../shared/datasets; set
    in the environment too, so that the commands this script starts find MNIST there."""
    if not os.environ.get("SMALLVISION_DATA"):
        checkout = Path(__file__).resolve().parents[1]
        copied = checkout / ".device-data"
        os.environ["SMALLVISION_DATA"] = str(copied if copied.is_dir() else checkout.parent / "shared" / "datasets")
    return Path(os.environ["SMALLVISION_DATA"])


def source_of(recipe: str) -> str:
    return "mnist" if "mnist" in recipe else str(data_root() / "cats_and_dogs_small")


def train(recipe: str, seed: int, mode: str, args, scratch: Path, extra: list[str] = ()) -> dict:
    """One training as a whole process: its metrics, and the command's wall seconds."""
    out = scratch / f"{recipe}-{mode}-{seed}{'-'.join([''] + [a.strip('-') for a in extra])}"
    command = [sys.executable, "-m", "smallvision.cli", "train", source_of(recipe), "--recipe", recipe,
               "--seed", str(seed), "--device", args.device, "--compile", mode, "--out", str(out), "--force",
               "--quiet", *extra]
    if args.quick:
        command += ["--epochs", "1", "--steps-per-epoch", "5"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        return {"recipe": recipe, "seed": seed, "mode": mode, "error": result.stderr.strip()[-600:],
                "command_seconds": seconds}
    metrics = json.loads((out / "metrics.json").read_text())
    return {"recipe": recipe, "seed": seed, "mode": mode, "run": str(out), "command_seconds": round(seconds, 2),
            **{key: metrics.get(key) for key in ("test_accuracy", "train_seconds", "compile_seconds",
                                                  "features_seconds", "images_per_second", "processes")}}


def summary_line(recipe: str, mode: str, rows: list[dict]) -> str:
    good = [row for row in rows if "error" not in row]
    if not good:
        return f"{recipe:18} {mode:16} FAILED: {rows[0]['error'].splitlines()[-1] if rows else '?'}"
    accuracy = statistics.mean(row["test_accuracy"] for row in good)
    training = statistics.median(row["train_seconds"] for row in good)
    compiling = statistics.median(row.get("compile_seconds") or 0.0 for row in good)
    command = statistics.median(row["command_seconds"] for row in good)
    recorded_seconds, recorded_accuracy = RECORDED[recipe]
    most_seconds, least_accuracy = BARS[recipe]
    verdict = [f"time {'ok' if training <= most_seconds else 'OVER'} (bar {most_seconds:g} s)"]
    if least_accuracy is not None:
        verdict.append(f"accuracy {'ok' if accuracy >= least_accuracy else 'SHORT'} (bar {least_accuracy})")
    return (f"{recipe:18} {mode:16} accuracy {accuracy:.4f} (mean of {len(good)}; recorded {recorded_accuracy})  "
            f"training {training:6.2f} s (recorded {recorded_seconds:g} s: {recorded_seconds / training:.1f}x)  "
            f"compile {compiling:5.1f} s  command {command:6.1f} s  {'; '.join(verdict)}")


def gpu_busy(recipe: str, mode: str, device: str, steps: int = 60) -> str:
    """Where a step's time goes, in this process: `steps` steps of `recipe` under torch's profiler after as
    many unprofiled ones; the wall time per step, the kernels' time per step, and their ratio (how busy the
    GPU is: for a network this small, the rest is Python and launches)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from smallvision.data.sources import open_source
    from smallvision.models import create_model
    from smallvision.recipe import builtin_recipes
    from smallvision.loop import fit

    chosen = builtin_recipes()[recipe].replace(epochs=1, steps_per_epoch=steps, compile=mode)
    size = chosen.data.image_size
    source = open_source(source_of(recipe), image_shape=(1, 28, 28) if "mnist" in recipe else (3, size, size),
                         val_split=0.0, test_split=0.0)
    where = torch.device(device)
    fit(create_model(chosen.network.model, source.train.shape[1:], source.train.num_classes), source.train, chosen,
        device=where, progress=False)  # warm: the allocator, cuDNN's choices, the compiled graphs
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if where.type == "cuda" else [])
    with profile(activities=activities) as profiled:
        history = fit(create_model(chosen.network.model, source.train.shape[1:], source.train.num_classes), source.train,
                      chosen, device=where, progress=False)
    wall = history.train_seconds / steps
    kernels = sum(event.self_device_time_total for event in profiled.key_averages()) / 1e6 / steps
    busy = f"{kernels / wall:.0%} busy" if where.type == "cuda" else "no GPU"
    return (f"{recipe} ({mode}), {steps} steps profiled: {1000 * wall:.2f} ms a step, of which the device's kernels "
            f"{1000 * kernels:.2f} ms ({busy})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--recipes", default="fast-mnist,seed-mnist,catsdogs-finetune,catsdogs")
    parser.add_argument("--modes", default="off,reduce-overhead", help="compile modes, each recipe trained with each")
    parser.add_argument("--seeds", default="0,1,2", help="for the MNIST recipes (photos: the first seed only)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds for one training")
    parser.add_argument("--quick", action="store_true", help="a few steps each: checks the script, measures nothing")
    args = parser.parse_args()
    data_root()  # before any command starts
    scratch = Path(tempfile.mkdtemp(prefix="sv-gpu-"))
    seeds = [int(seed) for seed in args.seeds.split(",")]
    rows, lines = [], []
    if args.device == "cuda":
        import torch

        lines.append(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    for recipe in args.recipes.split(","):
        for mode in args.modes.split(","):
            done = [train(recipe, seed, mode, args, scratch) for seed in (seeds if "mnist" in recipe else seeds[:1])]
            rows += done
            lines.append(summary_line(recipe, mode, done))
            print(lines[-1], flush=True)
    for recipe in ("seed-mnist", "fast-mnist"):  # how much of a step the GPU spends working
        for mode in args.modes.split(","):
            try:
                lines.append(gpu_busy(recipe, mode, args.device, steps=10 if args.quick else 60))
            except Exception as err:  # noqa: BLE001 -- a diagnosis, not a figure: the rest still runs
                lines.append(f"{recipe} ({mode}) profile FAILED: {type(err).__name__}: {str(err)[:300]}")
            print(lines[-1], flush=True)
    tuned = [row for row in rows if row["recipe"] == "catsdogs-finetune" and "error" not in row]
    if tuned:
        best = min(tuned, key=lambda row: row["train_seconds"])
        started = time.perf_counter()
        report = subprocess.run([sys.executable, "-m", "smallvision.cli", "report", best["run"], "--device",
                                 args.device, "-o", str(scratch / "report.html")], capture_output=True, text=True)
        seconds = time.perf_counter() - started
        lines.append(f"report on the fine-tuned run ({best['mode']}): {seconds:.1f} s, exit {report.returncode} "
                     f"(bar {REPORT_BAR:g} s: {'ok' if seconds <= REPORT_BAR else 'OVER'})")
        print(lines[-1], flush=True)
    # Issue 13: one GPU through torch.distributed (torchrun, NCCL) against plain train, alternately
    plain, launched = [], []
    for _ in range(1 if args.quick else 2):
        plain.append(train("seed-mnist", 0, "off", args, scratch))
        launched.append(train("seed-mnist", 0, "off", args, scratch,
                              ["--gpus", "1"] if args.device == "cuda" else ["--processes", "1"]))
    speeds = [statistics.median(row["images_per_second"] for row in runs if "error" not in row) if any(
        "error" not in row for row in runs) else None for runs in (plain, launched)]
    if None in speeds:
        lines.append(f"--gpus 1 against plain train: FAILED {[r.get('error') for r in plain + launched if 'error' in r]}")
    else:
        ratio = speeds[1] / speeds[0]
        lines.append(f"seed-mnist, --gpus 1 against plain train: {speeds[1]:,.0f} against {speeds[0]:,.0f} images/s: "
                     f"{ratio:.3f}x (bar: within 5%: {'ok' if abs(ratio - 1) <= 0.05 else 'NO'}); one GPU here, so "
                     f"multi-GPU scaling is not measured")
    print(lines[-1], flush=True)
    out = Path(os.environ.get("OUT") or Path(__file__).resolve().parent / "results")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"lines": lines, "rows": rows, "plain": plain, "launched": launched}, indent=2))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
