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

.PHONY: install demo test lint bench checkpoint clean

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

clean:
	rm -rf $(VENV) build *.egg-info out runs
