#!/usr/bin/env bash
# The label-efficiency table of docs/results.md: train and evaluate one setting on the synthetic scenes.
#   scripts/label_efficiency.sh SETTING [STEPS]
# SETTING: occle_10 | full_100 | occle_1 | no_projection | no_semantic | no_dual_mamba | lidar_only
# Data first: `make synth-data` (training seeds 0-3, evaluation seeds 8-9, disjoint scenes).
set -euo pipefail
setting=${1:?usage: $0 SETTING [STEPS]}
steps=${2:-500}
case "$setting" in
  occle_10) extra=() ;;
  full_100) extra=(--set data.label_ratio=1.0) ;;
  occle_1) extra=(--set data.label_ratio=0.01) ;;
  no_projection) extra=(--set loss.projection=0) ;;
  no_semantic) extra=(--set model.use_semantic_branch=false --set loss.pseudo_3d=0) ;;
  no_dual_mamba) extra=(--set model.use_dual_mamba=false) ;;
  lidar_only) extra=(--set model.use_image=false --set loss.pseudo_2d=0 --set loss.projection=0
                     --set model.use_semantic_branch=false --set loss.pseudo_3d=0) ;;
  *) echo "unknown setting: $setting" >&2; exit 2 ;;
esac
bin=$(dirname "$0")/../.venv/bin
out=runs/table/$setting
rm -rf "$out"
"$bin/occle-train" --config config/train_synthetic_tiny.yaml --out "$out" --steps "$steps" --no-progress \
  --set train.eval_every=1000000 "${extra[@]}"
"$bin/occle-eval" --checkpoint "$out/model.pt" --data data/synthetic --split val --out "$out/eval" --render 2
