# Two commands do everything on a fresh machine:
#   make demo   set up what is missing, train Panoptic FPN on the synthetic set, report PQ
#   make test   set up what is missing, run the test suite
PYTHON ?= python3
export PYTHONPATH := $(CURDIR):$(PYTHONPATH)

.PHONY: setup demo test lint format

setup:
	bash scripts/setup_env.sh

demo: setup
	$(PYTHON) train_net.py --config-file configs/quick_schedules/panoptic_fpn_synthetic.yaml

test: setup
	$(PYTHON) -m pytest -q tests

lint:
	ruff check . && ruff format --check .

format:
	ruff format . && ruff check --fix .
