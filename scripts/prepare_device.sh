#!/usr/bin/env bash
# Wheels for the GPU machine's bare image (Python 3.12, manylinux x86_64; torch, Lightning, timm, rich, pytest,
# scikit-learn, matplotlib already there; no Hydra, no TorchCodec, no network), into the git-ignored wheels/
# (< 64 MiB: what a device call may carry). Versions are this environment's, so the device runs what was tested here.
#   bash scripts/prepare_device.sh [PYTHON]      then, on the device: python3 scripts/device_check.py
# Left out: wandb (logger=wandb, ~20 MiB), datasets (data=hf), hydra-submitit-launcher (launcher=slurm).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-/work/venv/bin/python}
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
rm -rf wheels && mkdir -p wheels
binary=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
for pkg in hydra-core omegaconf webdataset braceexpand torchcodec; do
  "$PY" -m pip download -q --no-deps "${binary[@]}" -d wheels "$pkg==$(version "$pkg")"
done
# antlr4-python3-runtime 4.9.x (omegaconf's parser) is published as an sdist only: pure Python, built here.
"$PY" -m pip wheel -q --no-deps -w wheels "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
# vit_exp itself is not packed: the check runs the checkout's src/ (first on PYTHONPATH), as it is now.
ls -1 wheels
du -sh wheels
size=$(du -sm wheels | cut -f1)
if [ "$size" -ge 64 ]; then echo "wheels/ is ${size} MiB: over the 64 MiB a device call carries" >&2; exit 1; fi
