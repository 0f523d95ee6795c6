# Thin wrappers over the README's commands.
DATA_DIR ?= data
PYTHON ?= python

.PHONY: help install data run test test-full sweep p1-model p1-table p1-gorilla clean

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

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

P1_MODEL_DIR ?= outputs/pretrain_p1/mammals_1500
P1_DOGS = 'Chihuahua','Yorkshire terrier','golden retriever','Labrador retriever','German shepherd','standard poodle'

p1-model: data  ## the mini-CLIP of the README's subgroup table (CIFAR-10 + Tiny-ImageNet mammals + PACS; ~15 min on 2 cores)
	clip-unlearn-pretrain paths.data_dir=$(DATA_DIR) hydra.run.dir=$(P1_MODEL_DIR) \
	  'pretrain.datasets=[cifar10,tiny_imagenet_mammals,pacs]' pretrain.steps=1500 pretrain.decode_size=64 \
	  pretrain.eval_every=500 pretrain.eval_max_samples=1000 'pretrain.repeat={tiny_imagenet_mammals:6,pacs:8}' \
	  "pretrain.coarse_captions={dog:[$(P1_DOGS)],cat:['tabby','Persian cat','Egyptian cat'],primate:['orangutan','gorilla','chimpanzee','baboon']}"

P1_TABLE = $(PYTHON) scripts/subgroup_table.py --checkpoint $(P1_MODEL_DIR)/model.pt --data-dir $(DATA_DIR) \
	  --methods targeted_subgroup nullspace grad_ascent --output-dir outputs/p1_table

p1-table:  ## the README's subgroup table (targeted_subgroup vs nullspace vs grad_ascent) on that model
	$(P1_TABLE) --targets pacs/dog_sketch pacs/elephant_cartoon \
	  -- eval.max_samples=500 eval.avg_gap=false 'eval.heldout=[cifar10,tiny_imagenet_mammals]'
	$(P1_TABLE) --targets tiny_imagenet_mammals/chihuahua tiny_imagenet_mammals/gorilla \
	  -- eval.max_samples=500 eval.avg_gap=false 'eval.heldout=[cifar10,pacs]'

P1_GORILLA_DIR ?= outputs/multiruns/p1-gorilla

p1-gorilla:  ## the README's gorilla seeds (variant E = experiment=p1_mini_gorilla, 5 runs, 6-12 min on 2 cores) and their table
	clip-unlearn -m experiment=p1_mini_gorilla paths.data_dir=$(DATA_DIR) backbone.checkpoint=$(P1_MODEL_DIR)/model.pt \
	  hydra.sweep.dir=$(P1_GORILLA_DIR)
	clip-unlearn-collect $(P1_GORILLA_DIR)

clean:  ## remove caches and build files (keeps outputs/ and data/)
	rm -rf .pytest_cache build dist src/*.egg-info .cache/test-data
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
