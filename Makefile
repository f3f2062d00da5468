# Two commands do everything in a fresh Python environment (e.g. an empty virtualenv):
#   make demo   set up, train Panoptic FPN on the synthetic set, report COCO PQ
#   make test   set up, run the test suite
# `make setup` alone runs scripts/setup_env.sh (see INSTALL.md).
PYTHON ?= python3
export PYTHON

.PHONY: setup demo test test-only lint format

setup:
	bash scripts/setup_env.sh

# A second `make demo` trains afresh in the same OUTPUT_DIR instead of refusing to reuse it.
demo: setup
	$(PYTHON) train_net.py --config-file configs/quick_schedules/panoptic_fpn_synthetic.yaml --overwrite-output

test: setup test-only

test-only:
	$(PYTHON) -m pytest -q tests

lint:
	ruff check . && ruff format --check .

format:
	ruff format . && ruff check --fix .
