# make test: set up and run the test suite.  make demo: set up and run the demo.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Fashion-MNIST for the demo and tests (falls back to scikit-learn digits when absent);
# prometheus for promtool and the end-to-end monitoring tests; chromium for the console page test.
DEB_PACKAGES := dataset-fashion-mnist prometheus chromium

.PHONY: setup lock test test-fast lint format demo bench clean

setup: $(STAMP)

# Every Python package comes from requirements.lock, pinned and hash-checked; the project
# itself is installed on top without resolving anything.
$(STAMP): pyproject.toml requirements.lock scripts/system-deps.sh
	scripts/system-deps.sh $(DEB_PACKAGES)
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --require-hashes -r requirements.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

# Re-resolve requirements.lock from pyproject.toml and lock-constraints.txt (after changing
# a dependency, or to take newer releases); commit the result with the reason. The image's
# locks follow: its runtime set (no demo, benchmark or test packages; with the publish
# back-ends and the embedded broker) and the wheel's build backend. uv keeps each file's
# existing pins where it can, so they agree with requirements.lock (tests/test_deploy.py).
lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal -c lock-constraints.txt \
		--generate-hashes -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra s3 --extra gcs --extra broker --universal \
		-c lock-constraints.txt --generate-hashes -o requirements-image.lock
	echo "hatchling>=1.24,<2" | $(BIN)/uv pip compile - --universal --generate-hashes \
		-o requirements-build.lock

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/pytest

# Unit tests only: no broker, no processes, no learning-quality runs (about a minute).
test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow and not integration and not quality"

# The demo's base model (its reference probes, and images of its domain to distil on):
# trained once, then cached (about 3 minutes on 2 cores; delete .cache/base to rebuild; a
# cache without distill.jsonl, from before it existed, is rebuilt). configs/base.yaml says how.
BASE := .cache/base/base.safetensors
DISTILL := .cache/base/distill.jsonl
$(BASE) $(DISTILL) &: configs/base.yaml $(STAMP)
	$(BIN)/streamer pretrain --config configs/base.yaml --out .cache/base

demo: $(STAMP) $(BASE) $(DISTILL)
	$(BIN)/streamer demo --config configs/demo.yaml --out demo-out

# The benchmarks at a 2-core CPU size (about 19 min); results in benchmarks/results/.
# Bigger runs: see benchmarks/README.md (BENCH_ARGS / QUALITY_ARGS / SCALEOUT_ARGS pass flags through).
bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/quality.py $(QUALITY_ARGS)
	$(BIN)/python benchmarks/scaleout.py $(SCALEOUT_ARGS)
	$(BIN)/python benchmarks/labels.py $(LABELS_ARGS)

clean:
	rm -rf $(VENV) demo-out .cache .pytest_cache .ruff_cache
