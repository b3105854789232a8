# occle: one virtual environment in .venv, everything installed from this repository's own files.
# A GPU host overrides the torch pin, e.g. `make test TORCH_SPEC="torch==2.13.0 --index-url ..."`.
PYTHON ?= python3.11
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.occle-installed
# The official nuScenes devkit pins numpy<2, so it lives in a venv of its own; test_nuscenes cross-checks the
# reader against it through $OCCLE_NUSCENES_DEVKIT_PYTHON (the reader itself never imports it).
DEVKIT_VENV ?= .venv-devkit
DEVKIT_STAMP := $(DEVKIT_VENV)/.occle-installed
# DDS traffic stays on this host (loopback discovery only).
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export RMW_IMPLEMENTATION ?= rmw_fastrtps_cpp
export OMP_NUM_THREADS ?= 2

.PHONY: install demo test lint bench synth-data synth-data-realistic pseudo-noise pseudo-deeplab checkpoint synth-occ3d \
	checkpoint-occ3d checkpoint-kitti results pilot randomisation-ablation clean

install: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[ros,dev,segmenter]"
	touch $@

$(DEVKIT_STAMP):
	$(PYTHON) -m venv $(DEVKIT_VENV)
	$(DEVKIT_VENV)/bin/pip install --quiet nuscenes-devkit==1.2.0
	touch $@

demo: install
	$(BIN)/occle-demo --out out/demo

test: install $(DEVKIT_STAMP)
	$(BIN)/ruff check .
	OCCLE_NUSCENES_DEVKIT_PYTHON=$(abspath $(DEVKIT_VENV))/bin/python $(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/occle-bench

# Synthetic scenes, disjoint seeds (config/experiments.yaml `protocol`, config/train_synthetic_tiny.yaml):
# training sequences 00-03 = seeds 0-3, 40 frames each; dev 04-05 = seeds 4-5, 20 frames each (the pilot's
# schedule search only); validation 08-11 = seeds 8-11, 20 frames each (final scores only, never tuned on).
SYNTH := data/synthetic
SYNTH_ARGS := --out $(SYNTH) --image-scale 0.5 --quiet
synth-data: install
	for s in 0 1 2 3; do OMP_NUM_THREADS=1 $(BIN)/occle-synth $(SYNTH_ARGS) --seed $$s --sequence 0$$s --frames 40; done
	for s in 4 5 8 9 10 11; do OMP_NUM_THREADS=1 $(BIN)/occle-synth $(SYNTH_ARGS) --seed $$s \
		--sequence $$(printf %02d $$s) --frames 20; done

# The same scenes (same seeds, sequences and frames) with realistic-appearance images, in a root of their own; their
# pseudo_2d/ is the noise model's (the control row occle_10_realistic).
SYNTH_REALISTIC := data/synthetic_realistic
synth-data-realistic: install
	$(MAKE) synth-data SYNTH=$(SYNTH_REALISTIC) SYNTH_ARGS="--out $(SYNTH_REALISTIC) --image-scale 0.5 --quiet \
		--appearance realistic"

# The noise model's other levels next to pseudo_2d/ of data/synthetic: pseudo_2d_oracle/ (the true 2D labels)
# and pseudo_2d_x2/ (every noise component doubled); renders again, no LiDAR or voxels (rows oracle_2d, noise_x2).
pseudo-noise: synth-data
	for n in oracle x2; do for s in 0 1 2 3; do OMP_NUM_THREADS=1 $(BIN)/occle-synth $(SYNTH_ARGS) --seed $$s \
		--sequence 0$$s --frames 40 --pseudo-noise $$n --pseudo-only; done; done

# The real Cityscapes DeepLab's labels of the realistic images, in pseudo_2d_deeplab/ (row occle_10_deeplab).
DEEPLAB ?= ../shared/models/deeplab_cityscapes/deeplab_mobilenet_edgetpu_slim_cityscapes_quant.tflite
pseudo-deeplab: synth-data-realistic
	$(BIN)/occle-pseudo --segmenter deeplab-cityscapes --model $(DEEPLAB) --dataset semantic_kitti \
		--data $(SYNTH_REALISTIC) --label-dir pseudo_2d_deeplab

# Synthetic scenes seen by a nuScenes rig (six cameras, LIDAR_TOP) in the nuScenes v1.0 layout with Occ3D-nuScenes
# beside it: 5 scenes (seeds 100-104, official names: 4 train, 1 val) x 8 key frames, 112 x 200 images.
SYNTH_OCC3D := data/synthetic_occ3d
synth-occ3d: install
	OMP_NUM_THREADS=1 $(BIN)/occle-synth --layout nuscenes --out $(SYNTH_OCC3D) --scenes 5 --frames 8 \
		--image-scale 0.125 --seed 100 --quiet

# A small Occ3D-style checkpoint: tiny OccLE, six cameras, ego frame, 10% labels
# (config/train_occ3d_synthetic_tiny.yaml).
CHECKPOINT_OCC3D_STEPS ?= 300
checkpoint-occ3d: synth-occ3d
	$(BIN)/occle-train --config config/train_occ3d_synthetic_tiny.yaml --data $(SYNTH_OCC3D) \
		--out runs/occ3d_synthetic --steps $(CHECKPOINT_OCC3D_STEPS) --no-progress
	cp runs/occ3d_synthetic/model.pt models/occle_tiny_occ3d_synthetic.pt

# Retrain the shipped checkpoint: stage 1, OccLE tiny, 10% labels, seed 0 on the default synthetic scenes; stage 2,
# 300 steps on the fully randomised scenes (the `all` variant of config/randomisation.yaml; docs/real_frames.md);
# stage 3 (round 4), 300 more with the height shift and the hit skip on the same scenes (`all_hits_shift`).
CHECKPOINT_STEPS ?= 2000
checkpoint: synth-data
	OMP_NUM_THREADS=2 $(BIN)/python -m occle_experiments --results runs/checkpoint/results.json run occle_10 \
		--seed 0 --steps $(CHECKPOINT_STEPS) --out runs/checkpoint/occle_10
	OMP_NUM_THREADS=2 $(BIN)/python -m occle_experiments randomisation --variants all \
		--checkpoint runs/checkpoint/occle_10/model.pt --out runs/checkpoint/randomised
	OMP_NUM_THREADS=2 $(BIN)/python -m occle_experiments randomisation --variants all_hits_shift \
		--checkpoint runs/checkpoint/randomised/all/model.pt --out runs/checkpoint/hits
	cp runs/checkpoint/hits/all_hits_shift/model.pt models/occle_tiny_synthetic.pt

# The KITTI-adapted checkpoint: the shipped model adapted label-free on the real KITTI object frames 000000-000003
# (../shared/real/kitti, 002155 and 007347 held out and reported), the real Cityscapes DeepLab's pseudo labels,
# the scan's ground (--ground 0.35), half of the frames mirrored (data.flip 0.5), 120 steps; the class decision's
# ground gate at 0.6 m (docs/real_frames.md, "The flank rule and the chain shipped now": fold 2 of that chain).
KITTI_OBJECT ?= ../shared/real/kitti/training
checkpoint-kitti: install
	OMP_NUM_THREADS=2 $(BIN)/occle-adapt --checkpoint models/occle_tiny_synthetic.pt --dataset kitti_object \
		--data $(KITTI_OBJECT) --segmenter deeplab-cityscapes --segmenter-model $(DEEPLAB) \
		--out runs/adapt_kitti --steps 120 --hold-out 002155 007347 --ground 0.35 --set model.ground_gate=0.6 \
		--set data.flip=0.5 --no-progress
	cp runs/adapt_kitti/model.pt models/occle_tiny_kitti_adapted.pt

# One row of the label-efficiency experiment (docs/results.md): `make results ROW=occle_10 SEED=1 [STEPS=...]`
# trains and evaluates it, records it in docs/results.json and regenerates docs/results.md. Without STEPS the
# run takes the schedule S that `make pilot` found.
ROW ?= occle_10
SEED ?= 1
STEPS ?=
results: synth-data
	OMP_NUM_THREADS=2 $(BIN)/python -m occle_experiments run $(ROW) --seed $(SEED) $(if $(STEPS),--steps $(STEPS))
	$(BIN)/python -m occle_experiments report

# The pilot (sup_10 and occle_10, one seed, dev-split mIoU every 250 steps) that fixes the schedule S.
pilot: synth-data
	OMP_NUM_THREADS=2 $(BIN)/python -m occle_experiments pilot $(if $(STEPS),--steps $(STEPS))
	$(BIN)/python -m occle_experiments report

# The domain-randomisation ablation (config/randomisation.yaml, docs/real_frames.md): occle-synth data per variant
# (base, rig, appearance, sensor, accumulate, all) in data/randomisation/, the shipped checkpoint fine-tuned on each
# into runs/randomisation/<variant>/model.pt, evaluated on the real KITTI frames and two synthetic rigs; tables in
# runs/randomisation/randomisation.md. Options of `python -m occle_experiments randomisation` via RANDOMISATION_ARGS,
# e.g. RANDOMISATION_ARGS="--steps 100 --variants base rig" or "--eval-only".
RANDOMISATION_ARGS ?=
randomisation-ablation: install
	OMP_NUM_THREADS=2 $(BIN)/python -m occle_experiments randomisation $(RANDOMISATION_ARGS)

clean:
	rm -rf $(VENV) $(DEVKIT_VENV) build *.egg-info out runs
