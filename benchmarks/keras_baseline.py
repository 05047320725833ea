"""What the benchmarks share: the checkout's root, the Keras environment's interpreter, the CPUs a
run can play, and where their results are kept."""

import json
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The CPUs a benchmark's processes can play, as the environment variables that TensorFlow's and
# PyTorch's oneDNN, and PyTorch's own kernels, read when they start: "avx2" is a laptop without bf16.
CPUS = {"as-is": {}, "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}


def keras_python() -> str:
    """The Keras baseline's own interpreter (benchmarks/keras-env makes its environment on first use)."""
    made = subprocess.run([str(ROOT / "benchmarks" / "keras-env")], capture_output=True, text=True, check=True)
    return made.stdout.strip()


def save_results(benchmark: str, summary: dict) -> Path:
    """Write a benchmark's summary to benchmarks/results/BENCHMARK-TIME.json (git-ignored)."""
    results = ROOT / "benchmarks" / "results"
    results.mkdir(exist_ok=True)
    path = results / f"{benchmark}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(summary, indent=2))
    return path
