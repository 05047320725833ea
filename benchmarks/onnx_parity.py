"""Benchmark: runs exported as ONNX (`export --format onnx`), against the runs themselves.

For each run named: export it (into a scratch folder, the run is left as it was) and print the largest
absolute probability difference between onnxruntime and the run's own fp32 probabilities on 64 of its
test images (random images where its data is not here), beside the bar (1e-4).

Then, for the first run (or --latency RUN), the latency for one photo, median of --repeats:
- in this process (imports and loading not counted): `OnnxModel.predict` against `Run.predict` in fp32
  and in the run's own precision on this machine, for one image file (decode and network), and the
  network alone on one decoded image;
- as a whole process: `smallvision predict MODEL.onnx IMG` against `smallvision predict RUN IMG`
  (median of 5 each, wall seconds: Python, imports, loading and the answer).

    .venv/bin/python benchmarks/onnx_parity.py /work/runs14/seed-mnist /work/runs14/catsdogs-finetune
    .venv/bin/python benchmarks/onnx_parity.py runs/pets-1 --latency runs/pets-1 --image my_cat.jpg
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from keras_baseline import save_results
from smallvision.errors import SmallvisionError
from smallvision.onnx_export import PARITY_BAR, export_onnx, parity, trained_data_dir
from smallvision.onnx_model import OnnxModel
from smallvision.run import load_run
from smallvision.inference import predict_probabilities


def median_seconds(work, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def duration(seconds: float) -> str:
    return f"{seconds * 1e3:7.2f} ms" if seconds < 1 else f"{seconds:7.2f} s"


def one_photo(run, scratch: Path, image: str | None) -> Path:
    """--image, or the first test image file of the run's source, or (IDX digits) its first test image as a PNG."""
    if image:
        return Path(image)
    from PIL import Image

    try:
        data = run.labelled_split(split="test", data_dir=trained_data_dir(run))
    except SmallvisionError as err:  # the data is not here: a random image times the same
        print(f"note: timing a random image ({' '.join(str(err).split())[:150]})")
        data = None
    if data is not None and data.paths:
        root = Path(run.trained_root() or run.meta.source)
        for candidate in (root / data.paths[0], Path(data.paths[0])):
            if candidate.is_file():
                return candidate
    shape = run.meta.architecture.input_shape
    images = data.images if data is not None else torch.randint(0, 256, (1, *shape), dtype=torch.uint8)
    pixels = images[0].permute(1, 2, 0).numpy()
    path = scratch / "photo.png"
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(path)
    return path


def latency(run_dir: Path, model_path: Path, photo: Path, repeats: int, threads: int | None) -> dict:
    run = load_run(run_dir, "cpu")
    model = OnnxModel(model_path, threads=threads)
    own = run.precision
    rows = {}
    rows["predict one file: onnxruntime"] = median_seconds(lambda: model.predict([photo]), repeats)
    for precision in dict.fromkeys(["fp32", own]):
        run.precision = precision
        rows[f"predict one file: PyTorch {precision}"] = median_seconds(lambda: run.predict([photo]), repeats)
    pixels = model.read_image(photo)[None]
    image = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    rows["network alone, one image: onnxruntime"] = median_seconds(lambda: model.probabilities(pixels), repeats)
    for precision in dict.fromkeys(["fp32", own]):
        rows[f"network alone, one image: PyTorch {precision}"] = median_seconds(
            lambda: predict_probabilities(run.model, image, run.preprocess, precision, run.device, run.test_time_flip),
            repeats)
    command = [sys.executable, "-m", "smallvision.cli", "predict"]
    for name, target in (("onnxruntime", model_path), ("PyTorch", run_dir)):
        rows[f"`smallvision predict` as a process: {name}"] = median_seconds(
            lambda: subprocess.run([*command, str(target), str(photo)], check=True, capture_output=True), 5, warmup=1)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--latency", metavar="RUN", help="the run whose latency to measure (default: the first)")
    parser.add_argument("--image", help="the photo to time (default: the first test image of the run's source)")
    parser.add_argument("--repeats", type=int, default=50, help="in-process timings per figure (default 50)")
    parser.add_argument("--threads", type=int, help="in-process threads for both, PyTorch's and onnxruntime's "
                        "(default: as each library chooses; on a machine other work keeps busy, 1 keeps PyTorch's "
                        "threads from waiting on each other)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    summary = {"parity": {}, "latency": {}}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        exported = {}
        print(f"{'run':<40} {'largest |onnxruntime - PyTorch fp32|':>38}  bar {PARITY_BAR:.0e}  compared on")
        for index, run_dir in enumerate(map(Path, args.runs)):
            run = load_run(run_dir, "cpu")
            start = time.perf_counter()
            exported[run_dir] = export_onnx(run, scratch / f"{index}-{run_dir.name}.onnx")
            seconds = time.perf_counter() - start
            check = parity(run, exported[run_dir])
            verdict = "within" if check.within_bar else "OVER"
            print(f"{str(run_dir):<40} {check.difference:>38.1e}  {verdict:<8}  {check.images} (export {seconds:.1f} s, "
                  f"{exported[run_dir].stat().st_size / 1e6:.2f} MB)")
            summary["parity"][str(run_dir)] = {"difference": check.difference, "images": check.images,
                                               "within_bar": check.within_bar, "export_seconds": seconds}
        target = Path(args.latency) if args.latency else Path(args.runs[0])
        if target not in exported:
            exported[target] = export_onnx(load_run(target, "cpu"), scratch / f"latency-{target.name}.onnx")
        photo = one_photo(load_run(target, "cpu"), scratch, args.image)
        rows = latency(target, exported[target], photo, args.repeats, args.threads)
    print(f"\nlatency for one photo ({photo.name}), {target}: medians; (ratio) = PyTorch / onnxruntime; in-process "
          f"threads: {args.threads or 'default'} (PyTorch {torch.get_num_threads()}); load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    groups = {}
    for name, seconds in rows.items():
        groups.setdefault(name.split(": ")[0], []).append((name.split(": ")[1], seconds))
    for group, entries in groups.items():
        base = entries[0][1]
        line = "   ".join(f"{who} {duration(seconds)}" + ("" if who == "onnxruntime" else f" ({seconds / base:.2f}x)")
                          for who, seconds in entries)
        print(f"  {group:<36} {line}")
    summary["latency"] = {"run": str(target), "photo": str(photo), "seconds": rows, "threads": args.threads,
                          "load_average": os.getloadavg()[0]}
    print(f"\nresults: {save_results('onnx_parity', summary)}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
