# ferrograd developer tasks. `make help` lists them.
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= $(abspath ../shared/datasets)
export FERROGRAD_DATA ?= $(DATA)

.PHONY: help venv build test test-rust test-python lint stubtest fmt bench bench-python mnist clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "numpy>=1.21" "pytest>=7" "ruff>=0.5" "mypy>=1.8" "maturin>=1.5,<2" \
		"matplotlib>=3.7" "scikit-learn"  # the [plot] and [sklearn] extras, so their tests run

venv: $(PY)  ## create .venv with the build and test tools

build: $(PY)  ## build the extension (release) into .venv, editable
	$(VENV)/bin/maturin develop --release -q

test: lint test-rust build stubtest test-python  ## everything CI runs: lint, cargo test, build, stubtest, pytest

test-rust:  ## cargo test for the core (no Python needed)
	cargo test -p ferrograd-core

test-python: build  ## pytest against the built extension
	$(PY) -m pytest -q

lint: $(PY)  ## rustfmt, clippy -D warnings, rustdoc links, ruff
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc -q -p ferrograd-core --no-deps
	$(VENV)/bin/ruff check python tests benches examples
	$(VENV)/bin/ruff format --check python tests benches examples
	$(PY) -m mypy python/ferrograd

stubtest: build  ## check the hand-written _core.pyi against the built module
	$(PY) -m mypy.stubtest ferrograd._core

fmt: $(PY)  ## format Rust and Python
	cargo fmt --all
	$(VENV)/bin/ruff format python tests benches examples

bench:  ## criterion benches of the core (cargo bench)
	cargo bench -p ferrograd-core

bench-python: build  ## full-epoch MNIST benchmark against JAX/PyTorch when installed
	$(PY) benches/bench_train.py

mnist: build  ## train the MNIST MLP with the CLI
	$(VENV)/bin/ferrograd mnist --data $(DATA)

clean:  ## remove build outputs
	cargo clean
	rm -rf $(VENV) python/ferrograd/*.so
