# The two commands of the README: `make demo` (the main job on the toy data set) and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# CPU threads for the demo and tests; the CI machine has two cores.
export OMP_NUM_THREADS ?= 2

.PHONY: setup deps op lint test demo demo-panoptic demo-finetune demo-longtail bench clean

setup: deps op

deps:
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps panopticapi-lite==0.2.0

# Builds and installs the multi-scale deformable attention extension (CPU kernels, and CUDA
# kernels wherever nvcc and a CUDA build of torch are found).
op:
	sh models/ops/make.sh

lint:
	$(PYTHON) -m ruff check .

test: setup lint
	$(PYTHON) -m pytest -q tests

# Trains on the toy set, evaluates, plots the log and draws detections into exps/demo/; fails if
# AP@0.5 stays below 0.5. The training flags are in configs/toy_demo.sh.
demo: setup
	$(PYTHON) tools/demo.py --output_dir exps/demo

# The demo's model with the mask head on the toy panoptic set (things and stuff), trained jointly;
# writes PQ (PQ_all, PQ_th, PQ_st) to exps/demo_panoptic/eval_stats.json and predictions to
# panoptic_eval/; fails if PQ stays below 0.3. The training flags are in configs/toy_panoptic_demo.sh.
demo-panoptic: setup
	$(PYTHON) tools/demo.py --config configs/toy_panoptic_demo.sh --output_dir exps/demo_panoptic \
		--min_ap50 0.3 --min_pq 0.3

# Fine-tuning (docs/finetune_predict.md): a COCO-shaped (91-class) checkpoint, made by training the demo's
# model on the toy set with --num_classes 91, fine-tuned with --finetune onto a 3-class set (the toy
# images' squares, circles and triangles, ids 0-2, as COCO-format files); fails if AP@0.5 stays below 0.5.
demo-finetune: setup
	$(PYTHON) tools/demo_finetune.py --output_dir exps/demo_finetune

# BatchFormer (V1, a small CNN) and BatchFormerV2 (a small ViT) on long-tailed real digits
# (scikit-learn's load_digits, no download): base against +BatchFormer over 5 seeds, imbalance ratios
# 10 and 50; prints All/Many/Medium/Few accuracy and the paired differences, writes
# exps/demo_longtail/longtail.png. One thread per run (the models are tiny).
demo-longtail: setup
	$(PYTHON) tools/demo_longtail.py --output_dir exps/demo_longtail

bench:
	$(PYTHON) benchmarks/ms_deform_attn.py

clean:
	rm -rf build models/ops/build models/ops/*.egg-info .pytest_cache .ruff_cache
