"""What the benchmarks that run the seed's Keras programs share: the checkout's root and the Keras
environment's interpreter."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def keras_python() -> str:
    """The Keras baseline's own interpreter (benchmarks/keras-env makes its environment on first use)."""
    made = subprocess.run([str(ROOT / "benchmarks" / "keras-env")], capture_output=True, text=True, check=True)
    return made.stdout.strip()
