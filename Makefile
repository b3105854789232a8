# occle: one virtual environment in .venv, everything installed from this repository's own files.
# A GPU host overrides the torch pin, e.g. `make test TORCH_SPEC="torch==2.13.0 --index-url ..."`.
PYTHON ?= python3.11
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.occle-installed
# DDS traffic stays on this host (loopback discovery only).
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST
export RMW_IMPLEMENTATION ?= rmw_fastrtps_cpp
export OMP_NUM_THREADS ?= 2

.PHONY: install demo test lint bench synth-data checkpoint results clean

install: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[ros,dev]"
	touch $@

demo: install
	$(BIN)/occle-demo --out out/demo

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/occle-bench

# Synthetic training / evaluation scenes (training seeds 0-3 and evaluation seeds 8-9 are disjoint).
SYNTH := data/synthetic
synth-data: install
	for s in 0 1 2 3; do OMP_NUM_THREADS=1 $(BIN)/occle-synth --out $(SYNTH) --seed $$s --sequence 0$$s \
		--frames 20 --image-scale 0.5 --quiet; done
	for s in 8 9; do OMP_NUM_THREADS=1 $(BIN)/occle-synth --out $(SYNTH) --seed $$s --sequence 0$$s \
		--frames 10 --image-scale 0.5 --quiet; done

# Retrain the shipped checkpoint (OccLE, tiny, 10% labels) from scratch.
STEPS ?= 250
CHECKPOINT_STEPS ?= 2000
checkpoint: synth-data
	OMP_NUM_THREADS=2 scripts/label_efficiency.sh occle_10 $(CHECKPOINT_STEPS)
	cp runs/table/occle_10/model.pt models/occle_tiny_synthetic.pt

# The label-efficiency table of docs/results.md (two runs side by side, one thread each).
results: synth-data
	printf '%s\n' occle_10 full_100 occle_1 no_projection no_semantic no_dual_mamba lidar_only | \
		OMP_NUM_THREADS=1 xargs -P 2 -I{} scripts/label_efficiency.sh {} $(STEPS)

clean:
	rm -rf $(VENV) build *.egg-info out runs
