#!/usr/bin/env bash
# The two TRL virtual environments that benchmarks/training_speed.py compares sapo against.
#
# TRL is a benchmark-only dependency and never enters sapo's own environment:
#   benchmarks/.venv-trl116  trl 1.16 (ORPOTrainer, under trl.experimental.orpo)
#   benchmarks/.venv-trl029  trl 0.29.1 (PRMTrainer, under trl.experimental.prm; trl 1.x has none)
#
# Usage: bash benchmarks/trl_envs.sh [--force]     (--force deletes and rebuilds existing envs)
#
# torch goes in first, alone: `pip install torch==2.13.0` picks the local CPU wheel (pip's find-links), and
# with torch already present nothing later pulls a CUDA build. transformers is pinned: for trl 1.16 the
# version sapo's own venv uses (the same model code on both sides); trl 0.29.1 predates it by eight
# months, so it gets the stack current when it came out (2026-03-20): transformers 5.3.0, accelerate 1.13.0,
# datasets 4.8.3. accelerate and datasets for trl 1.16 are sapo's versions too.
# PYTHON picks the interpreter (default: the one sapo's .venv was made from, else python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
force=0
[[ "${1:-}" == "--force" ]] && force=1

if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=python3
    if [[ -x "$root/.venv/bin/python" ]]; then
        PYTHON="$("$root/.venv/bin/python" -c 'import sys; print(sys._base_executable)')"
    fi
fi

TORCH="torch==2.13.0"

make_env() {
    local dir="$1" check="$2"
    shift 2
    if [[ -d "$dir" && $force -eq 1 ]]; then
        rm -rf "$dir"
    fi
    if [[ ! -x "$dir/bin/python" ]]; then
        echo "== creating $dir with $PYTHON"
        "$PYTHON" -m venv "$dir"
    fi
    "$dir/bin/python" -m pip install --quiet --upgrade pip
    echo "== $dir: $TORCH"
    "$dir/bin/python" -m pip install --quiet "$TORCH"
    echo "== $dir: $*"
    "$dir/bin/python" -m pip install --quiet "$TORCH" "$@"
    "$dir/bin/python" -c "$check"
}

make_env "$here/.venv-trl116" \
    "import torch, transformers, trl; from trl.experimental.orpo import ORPOConfig, ORPOTrainer; \
print('trl', trl.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)" \
    "trl==1.16.*" "transformers==5.24.0" "accelerate==1.15.0" "datasets==5.2.0"

make_env "$here/.venv-trl029" \
    "import torch, transformers, trl; from trl.experimental.prm import PRMConfig, PRMTrainer; \
print('trl', trl.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)" \
    "trl==0.29.1" "transformers==5.3.0" "accelerate==1.13.0" "datasets==4.8.3"

echo "both TRL environments are ready"
