# posescale: the two commands a new user runs are `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV_PYTHON := .venv/bin/python
DEMO_DATA := data/demo
DEMO_TRAIN_IMAGES ?= 2000
DEMO_VAL_IMAGES ?= 300

# Caches that tools write stay inside the project (pose/caches.py sets the same defaults).
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export WANDB_DIR ?= $(CURDIR)/.cache/wandb
export WANDB_CACHE_DIR ?= $(CURDIR)/.cache/wandb/cache
export WANDB_CONFIG_DIR ?= $(CURDIR)/.cache/wandb/config
export WANDB_DATA_DIR ?= $(CURDIR)/.cache/wandb/data
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib
export TRITON_CACHE_DIR ?= $(CURDIR)/.cache/triton
export PIP_CACHE_DIR ?= $(CURDIR)/.cache/pip

.PHONY: install demo demo-data demo-shards demo-sweep demo-mix demo-mix-data test lint docs format clean lock wheelhouse gpu-check install-check scale-check

install:
	bash launch/install.sh

# Generate the synthetic COCO-format dataset once (a stamp records the sizes, the seed and the
# generator's source hash, so a changed generator regenerates).
demo-data: install
	@gen=$$(sha256sum data_prep/synthetic.py | cut -c1-12); \
	stamp="$(DEMO_DATA)/.generated-$(DEMO_TRAIN_IMAGES)-$(DEMO_VAL_IMAGES)-seed0-$$gen"; \
	if [ -f "$$stamp" ]; then echo "demo data: $(DEMO_DATA) is up to date"; else \
	  rm -rf $(DEMO_DATA) && \
	  $(VENV_PYTHON) -m data_prep.synthetic --out $(DEMO_DATA) --seed 0 \
	    --train-images $(DEMO_TRAIN_IMAGES) --val-images $(DEMO_VAL_IMAGES) && touch "$$stamp"; fi

# Crop every person once into WebDataset shards (a finished folder is left as it is).
demo-shards: demo-data
	$(VENV_PYTHON) -m data_prep.shard_coco --ann $(DEMO_DATA)/annotations/person_keypoints_train.json \
	  --images $(DEMO_DATA)/images/train --out $(DEMO_DATA)/shards/train --split train \
	  --detail 128x96 --workers 2 --overwrite
	$(VENV_PYTHON) -m data_prep.shard_coco --ann $(DEMO_DATA)/annotations/person_keypoints_val.json \
	  --images $(DEMO_DATA)/images/val --out $(DEMO_DATA)/shards/val --split val --detail 128x96 --overwrite
	$(VENV_PYTHON) -m data_prep.shard_coco --ann $(DEMO_DATA)/annotations/person_keypoints_val.json \
	  --images $(DEMO_DATA)/images/val --out $(DEMO_DATA)/shards/val_dets --split val \
	  --dets $(DEMO_DATA)/annotations/person_detections_val.json --detail 128x96 --overwrite
	$(VENV_PYTHON) -m data_prep.verify $(DEMO_DATA)/shards/train

demo: demo-shards
	@start=$$(date +%s); \
	$(VENV_PYTHON) -m data_prep.preview --config configs/demo.yaml --out runs/demo/input_preview.png && \
	$(VENV_PYTHON) benchmarks/data_pipeline.py --rounds 3 --json runs/demo/data_pipeline.json \
	  --plot runs/demo/data_pipeline.png && \
	$(VENV_PYTHON) -m pose.models.summary --config configs/demo.yaml && \
	train_start=$$(date +%s) && \
	$(VENV_PYTHON) launch/train.py --config configs/demo.yaml && \
	train_s=$$(( $$(date +%s) - train_start )) && \
	$(VENV_PYTHON) launch/eval.py --config configs/demo.yaml --checkpoint runs/demo \
	  --out runs/demo/metrics.json --pictures runs/demo/pictures/val_people.png && \
	$(VENV_PYTHON) launch/predict.py --checkpoint runs/demo --input $(DEMO_DATA)/images/val \
	  --boxes $(DEMO_DATA)/annotations/person_detections_val.json \
	  --ann $(DEMO_DATA)/annotations/person_keypoints_val.json \
	  --out runs/demo/pictures/predict --limit 6 && \
	$(VENV_PYTHON) launch/export.py --checkpoint runs/demo --out runs/demo/export \
	  --image $(DEMO_DATA)/images/val && \
	echo "demo: done in $$(( $$(date +%s) - start )) s; see runs/demo/ (metrics.json, pictures/," \
	  "input_preview.png, data_pipeline.json/.png, export/)" && \
	$(VENV_PYTHON) launch/summary.py runs/demo --eval runs/demo/metrics.json --seconds $$train_s

# Two datasets in one run (docs/data.md): the demo's people in COCO's 17 joints and others drawn
# in AI Challenger's 14 (data/demo_aic), trained over the union of both layouts, each val set
# scored in its own (configs/demo_mix.yaml).
DEMO_AIC := data/demo_aic
demo-mix-data: install
	@gen=$$(sha256sum data_prep/synthetic.py | cut -c1-12); \
	stamp="$(DEMO_AIC)/.generated-$(DEMO_TRAIN_IMAGES)-$(DEMO_VAL_IMAGES)-seed1-aic14-$$gen"; \
	if [ -f "$$stamp" ]; then echo "demo-mix data: $(DEMO_AIC) is up to date"; else \
	  rm -rf $(DEMO_AIC) && \
	  $(VENV_PYTHON) -m data_prep.synthetic --out $(DEMO_AIC) --seed 1 --layout aic14 \
	    --train-images $(DEMO_TRAIN_IMAGES) --val-images $(DEMO_VAL_IMAGES) && touch "$$stamp"; fi
	for split in train val; do \
	  $(VENV_PYTHON) -m data_prep.shard_coco --ann $(DEMO_AIC)/annotations/person_keypoints_$$split.json \
	    --images $(DEMO_AIC)/images/$$split --out $(DEMO_AIC)/shards/$$split --split $$split \
	    --detail 128x96 --workers 2 --overwrite; done

demo-mix: demo-shards demo-mix-data
	@start=$$(date +%s); \
	$(VENV_PYTHON) launch/train.py --config configs/demo_mix.yaml && \
	$(VENV_PYTHON) launch/eval.py --checkpoint runs/demo_mix --out runs/demo_mix/metrics.json && \
	$(VENV_PYTHON) launch/predict.py --checkpoint runs/demo_mix --input $(DEMO_AIC)/images/val \
	  --boxes $(DEMO_AIC)/annotations/person_detections_val.json \
	  --ann $(DEMO_AIC)/annotations/person_keypoints_val.json \
	  --out runs/demo_mix/pictures/predict --limit 4 && \
	echo "demo-mix: done in $$(( $$(date +%s) - start )) s; see runs/demo_mix/ (metrics.json:" \
	  "coco/AP and aic/AP, each in its own layout; pictures/predict: the union's 19 joints)"

# The three attention variants as one sweep, each fine-tuned from the demo model's backbone
# (configs/sweeps/demo.yaml; `make demo` first when its export is missing): through Slurm when a
# cluster answers (for one on this machine: `slurm/local-cluster.sh start`, then export the
# SLURM_CONF line it prints), otherwise with submitit's local executor; then the comparison.
DEMO_EXPORT := runs/demo/export
demo-sweep: demo-shards
	@$(VENV_PYTHON) -m pose.folders --is-export $(DEMO_EXPORT) || $(MAKE) demo
	@start=$$(date +%s); \
	if [ -d runs/sweeps/demo-attention ]; then \
	  echo "demo-sweep: removing the previous sweep, runs/sweeps/demo-attention"; fi; \
	rm -rf runs/sweeps/demo-attention; \
	if command -v sinfo >/dev/null && sinfo -h >/dev/null 2>&1; then mode=--wait; \
	  echo "demo-sweep: submitting to Slurm ($$(sinfo -h -o '%P %D node(s)' | head -n 1))"; \
	else mode=--local; echo "demo-sweep: no Slurm cluster answers; running with --local"; fi; \
	$(VENV_PYTHON) launch/sweep.py configs/sweeps/demo.yaml --out runs/sweeps/demo-attention $$mode && \
	$(VENV_PYTHON) launch/compare.py runs/sweeps/demo-attention --by model.attention && \
	echo "demo-sweep: done in $$(( $$(date +%s) - start )) s; see runs/sweeps/demo-attention/compare/"

# Wheels to install posescale offline on a machine that has its own torch (docs/installing.md).
wheelhouse: install
	PY=$(or $(PY),3.12) CUDA=$(or $(CUDA),13) OUT=$(OUT) bash launch/wheelhouse.sh

# Install into a fresh venv that has its own torch (PY, TORCH), offline from WHEELHOUSE if given,
# and run the console scripts from another folder (launch/install_check.sh).
install-check:
	PY=$(or $(PY),3.12) TORCH=$(or $(TORCH),2.11.0) WHEELHOUSE=$(WHEELHOUSE) CUDA=$(or $(CUDA),13) bash launch/install_check.sh

# On a machine with a CUDA GPU: the gpu-marked tests and the throughput benchmark, written to
# runs/gpu-check/report.md and report.json. Without CUDA it says so and exits 0.
# GPU_PYTHON: the interpreter whose torch sees the GPU (default: the venv's, else python3).
GPU_PYTHON ?= $(if $(wildcard $(VENV_PYTHON)),$(VENV_PYTHON),python3)
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py --out runs/gpu-check

# Cost as the data grows (benchmarks/scale.py) at small sizes; the full run and its table are in
# BENCHMARKS.md. The test suite runs the same quick mode (tests/test_scale_benchmark.py).
scale-check: install
	$(VENV_PYTHON) benchmarks/scale.py --quick --json runs/scale-quick.json

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

# The guides and the API reference as a site (.cache/site/); a broken link, a page missing from
# the nav or an API reference that does not resolve fails the build.
docs: install
	$(VENV_PYTHON) -m mkdocs build --strict --quiet

test: lint docs
	$(VENV_PYTHON) -m pytest

format: install
	.venv/bin/ruff check --fix .
	.venv/bin/ruff format .

# Re-resolve the pinned environment after changing a direct dependency in setup.cfg.
lock: install
	$(VENV_PYTHON) -m pip freeze --exclude-editable | grep -v -e '^pip==' -e '^setuptools==' -e '^wheel==' \
	  > requirements.lock.new && mv requirements.lock.new requirements.lock

clean:
	rm -rf .venv .cache runs data .pytest_cache .ruff_cache
