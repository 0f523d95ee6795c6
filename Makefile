# Thin wrappers over the README's commands.
DATA_DIR ?= data
PYTHON ?= python

.PHONY: help install data run test test-full sweep clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install:  ## install clip-unlearn with its test tools (torch pinned to the wheels on this machine's disk)
	$(PYTHON) -m pip install torch==2.14.1 torchvision==0.29.1 -e ".[dev]"

data:  ## extract the offline image archives of ../shared/assets into $(DATA_DIR)
	$(PYTHON) scripts/prepare_assets.py $(DATA_DIR)

run: data  ## one run: forget CIFAR-10 "cat" with the nullspace method (tiny random-init backbone)
	clip-unlearn paths.data_dir=$(DATA_DIR) dataset=cifar10 forget=cifar10/cat method=nullspace method.alpha=1.0

test:  ## the default test suite (CPU, offline)
	$(PYTHON) -m pytest

test-full:  ## every test, the slow behavioural ones included
	$(PYTHON) -m pytest -m "slow or not slow"

SWEEP_DIR ?= outputs/multiruns/make-sweep

sweep: data  ## a 3 x 2 multirun grid (nullspace strength x forget target), then its table and plots
	clip-unlearn -m paths.data_dir=$(DATA_DIR) hydra.sweep.dir=$(SWEEP_DIR) method.alpha=0,0.5,1.0 forget=cifar10/cat,cifar10/dog
	clip-unlearn-collect $(SWEEP_DIR)

clean:  ## remove caches and build files (keeps outputs/ and data/)
	rm -rf .pytest_cache build dist src/*.egg-info .cache/test-data
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
