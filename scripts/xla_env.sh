#!/usr/bin/env bash
# An environment for hw=tpu: torch_xla 2.9 (the newest on PyPI) pins torch 2.9.0 exactly, so it cannot share the
# main environment's torch. Creates VENV_DIR (default .venv-xla) with torch 2.9.0 (CPU wheels), torchvision 0.24.0,
# torch_xla 2.9.0 and this project (editable, with its dev extras), about 4 GB and 5 minutes.
#   bash scripts/xla_env.sh [VENV_DIR]          # on a TPU VM add the TPU runtime: pip install 'torch_xla[tpu]==2.9.0'
#   PJRT_DEVICE=CPU VENV_DIR/bin/python -m pytest -m xla tests/xla     # the XLA tests, on torch_xla's CPU backend
# DRY_RUN=1 resolves the packages with `pip install --dry-run` and installs nothing (the venv is still created).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv-xla}
python3 -m venv "$venv"
pip=("$venv/bin/python" -m pip install ${DRY_RUN:+--dry-run})
"$venv/bin/python" -m pip install -q --upgrade pip
# One resolution: torch_xla's exact pin and the project's ranges together (pip keeps torch at 2.9.0).
"${pip[@]}" torch==2.9.0 torchvision==0.24.0 torch_xla==2.9.0 -e ".[dev]"
if [[ -z "${DRY_RUN:-}" ]]; then
  PJRT_DEVICE=CPU "$venv/bin/python" -c "import torch, torch_xla, vit_exp; print('torch', torch.__version__, \
'torch_xla', torch_xla.__version__, 'vit_exp at', vit_exp.__file__)"
fi
