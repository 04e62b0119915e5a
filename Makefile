# The two commands of the README: `make demo` (the main job on the toy data set) and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# CPU threads for the demo and tests; the CI machine has two cores.
export OMP_NUM_THREADS ?= 2

.PHONY: setup deps op lint test demo demo-panoptic bench clean

setup: deps op

deps:
	$(PIP) install -q -r requirements.txt

# Builds and installs the multi-scale deformable attention extension (CPU kernels, and CUDA
# kernels wherever nvcc and a CUDA build of torch are found).
op:
	sh models/ops/make.sh

lint:
	$(PYTHON) -m ruff check .

test: setup lint
	$(PYTHON) -m pytest -q tests

demo: setup
	@echo "make demo: the toy training job arrives with the training pipeline (issue 4)." && exit 1

bench:
	$(PYTHON) benchmarks/ms_deform_attn.py

clean:
	rm -rf build models/ops/build models/ops/*.egg-info .pytest_cache .ruff_cache
