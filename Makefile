# ftsweep: set-up, tests and the demo on a fresh machine. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch (small, and what the tests and the demo need). With a GPU, use e.g.
#   make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu130"
TORCH_SPEC ?= torch==2.13.0
# No torchvision (the image trainer's augmentations are plain torch): PyPI's torchvision wheels are CUDA
# builds that fail to import beside the CPU torch ("operator torchvision::nms does not exist"), and
# transformers imports torchvision whenever it is installed, so one would break every model load.
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.ftsweep-installed

.PHONY: help install test test-quick demo lint bench clean

help:
	@echo "make install     create $(VENV) and install ftsweep with its test and demo extras"
	@echo "make test        install, then run the whole test suite (what CI runs)"
	@echo "make test-quick  the suite without the slow end-to-end tests"
	@echo "make demo        install, then run the bundled demo sweep (8 small trials) and its final fit on the CPU"
	@echo "make lint        ruff check, ruff format --check and mypy (what CI checks)"

$(STAMP): pyproject.toml docker/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[dev,demo]" --constraint docker/constraints.txt
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

test-quick: install
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

demo: install
	cd examples/campaign && HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
	  ../../$(BIN)/ftsweep run demo.yaml --set trainer.model="$$(../../$(BIN)/python demo_model.py)" \
	  --set study.storage=sqlite:///demo.db --set tracking.mlflow_uri=sqlite:///demo-mlflow.db \
	  && ../../$(BIN)/ftsweep best campaign-demo --storage sqlite:///demo.db \
	  && ../../$(BIN)/ftsweep final campaign-demo --storage sqlite:///demo.db --seeds 1 --baseline

LINT_PATHS := ftsweep_common orchestrator trainers search_spaces tests bench examples
TYPED_PACKAGES := ftsweep_common orchestrator trainers search_spaces

lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy $(TYPED_PACKAGES)

clean:
	rm -rf $(VENV) examples/campaign/demo.db examples/campaign/demo-mlflow.db examples/campaign/mlartifacts \
	  examples/campaign/ftsweep-runs examples/campaign/tiny-model
