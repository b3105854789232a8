#!/usr/bin/env bash
# One row of the label-efficiency experiment (rows: config/experiments.yaml); a thin call of the runner.
#   scripts/label_efficiency.sh ROW SEED [STEPS]     (without STEPS: the pilot's schedule S)
# Data first: `make synth-data`. Equivalent: make results ROW=... SEED=... [STEPS=...]
set -euo pipefail
row=${1:?usage: $0 ROW SEED [STEPS]}
seed=${2:?usage: $0 ROW SEED [STEPS]}
bin=$(dirname "$0")/../.venv/bin
"$bin/python" -m occle_experiments run "$row" --seed "$seed" ${3:+--steps "$3"}
