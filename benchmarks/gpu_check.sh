#!/usr/bin/env bash
# The prepared device check (see benchmarks/gpu_check.py): parity, precision, attention variants, 20-step sampling
# and training speed, peak memory, as one table, in at most 8 minutes on a CUDA device.
#
#   benchmarks/gpu_check.sh [--json gpu.json]     # CUDA (the project's venv with a CUDA torch active)
#   benchmarks/gpu_check.sh --quick --device cpu  # the seconds-long smoke run (tests/test_benchmarks.py)
#
# PYTHON picks the interpreter (default: python). A hard stop at 480 s interrupts the run, which still prints the
# rows measured so far; the script's own budget (--budget-s, 420 s) normally skips what is left before that.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HF_HUB_OFFLINE=1
# The checkout's own package first: the check runs where mage-hf is not installed (torch, transformers and
# diffusers are enough).
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec timeout --signal=INT --kill-after=20 480 "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
