"""Benchmark: Keras model files saved by real Keras, imported, against Keras' own predictions.

For every file in ../shared/keras (files.json lists them), `import-keras` makes a run and the run
predicts the images Keras predicted (predictions.npz); printed: the largest absolute difference of
the probabilities beside the bar (1e-4) and the import's seconds. No TensorFlow is needed.

    .venv/bin/python benchmarks/keras_import.py [--keras ../shared/keras]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from keras_baseline import ROOT, save_results
from smallvision.keras_files import import_keras

BAR = 1e-4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keras", type=Path, default=ROOT.parent / "shared" / "keras")
    args = parser.parse_args()
    files = json.loads((args.keras / "files.json").read_text())
    saved = np.load(args.keras / "predictions.npz")
    summary = {}
    print(f"{'file':<22} {'written by':<12} {'images':>6} {'max |p - Keras p|':>18} {'bar':>7} {'import s':>9}")
    with tempfile.TemporaryDirectory() as scratch:
        for name, info in files.items():
            started = time.perf_counter()
            run = import_keras(args.keras / name, Path(scratch) / name, info["classes"])
            seconds = time.perf_counter() - started
            images = torch.from_numpy(saved[f"{name}/images"]).permute(0, 3, 1, 2).contiguous()
            expected = torch.from_numpy(saved[f"{name}/probabilities"])
            probabilities = run.probabilities(images)
            if expected.shape[1] == 1:
                probabilities = probabilities[:, 1:]
            difference = float((probabilities - expected).abs().max())
            summary[name] = {"max_abs_difference": difference, "images": len(images), "import_seconds": seconds,
                             "written_by": run.meta.imported_from.written_by}
            print(f"{name:<22} {summary[name]['written_by']:<12} {len(images):>6} {difference:>18.2e} {BAR:>7.0e} "
                  f"{seconds:>9.2f}  {'ok' if difference <= BAR else 'OVER THE BAR'}")
    save_results("keras_import", summary)


if __name__ == "__main__":
    main()
