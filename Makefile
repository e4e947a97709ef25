# ferrograd developer tasks. `make help` lists them.
VENV ?= .venv
PY := $(VENV)/bin/python
# Stamp: the dev tools are in $(VENV). A `.venv` alone proves nothing: the
# README's first command makes one holding only ferrograd and numpy.
TOOLS := $(VENV)/.ferrograd-dev-tools
DATA ?= $(abspath ../shared/datasets)
export FERROGRAD_DATA ?= $(DATA)

.PHONY: help venv build wheel sdist test test-rust test-python lint stubtest fmt bench bench-python \
	mnist clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'

# Reinstalls (quickly, pip finds most of it there) when this Makefile changes.
$(TOOLS): Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "numpy>=1.21" "pytest>=7" "ruff>=0.5" "mypy>=1.8" "maturin>=1.9,<2" \
		"matplotlib>=3.7" "scikit-learn>=1.6" "mpi4py>=4.1" "mpich"  # the [plot], [sklearn] and [mpi] extras, so their tests run
	touch $@

venv: $(TOOLS)  ## create .venv (or complete one) with the build and test tools

build: $(TOOLS)  ## build the extension (release) into .venv, editable
	$(VENV)/bin/maturin develop --release -q

# Same cargo invocation as `build`, so after it this only packs the wheel. Its
# tag is the oldest glibc this machine's build allows (manylinux_2_34 on glibc
# 2.36); `make wheel ZIG=1` links with zig for manylinux2014 (glibc 2.17), a
# full release build of its own.
wheel: $(TOOLS)  ## build the release wheel into dist/ (abi3, manylinux; ZIG=1: manylinux2014)
	rm -f dist/ferrograd-*.whl
ifdef ZIG
	$(PY) -m pip install -q ziglang
	PATH="$(abspath $(VENV))/bin:$$PATH" $(VENV)/bin/maturin build --release -q --out dist \
		--zig --compatibility manylinux2014
else
	$(VENV)/bin/maturin build --release -q --out dist
endif

sdist: $(TOOLS)  ## build the source distribution into dist/
	rm -f dist/ferrograd-*.tar.gz
	$(VENV)/bin/maturin sdist --out dist

test: lint test-rust build stubtest test-python  ## everything CI runs: lint, cargo test, build, stubtest, pytest (+ the wheel)

test-rust:  ## cargo test for the core (no Python needed)
	cargo test -p ferrograd-core

test-python: build wheel  ## pytest against the built extension; tests/test_wheel.py installs dist/'s wheel
	$(PY) -m pytest -q

lint: $(TOOLS)  ## rustfmt, clippy -D warnings, rustdoc links, ruff
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc -q -p ferrograd-core --no-deps
	$(VENV)/bin/ruff check python tests benches examples
	$(VENV)/bin/ruff format --check python tests benches examples
	$(PY) -m mypy python/ferrograd

stubtest: build  ## check the hand-written _core.pyi against the built module
	$(PY) -m mypy.stubtest ferrograd._core

fmt: $(TOOLS)  ## format Rust and Python
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
	rm -rf $(VENV) dist python/ferrograd/*.so
