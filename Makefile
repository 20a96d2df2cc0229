# Everything runs inside a project virtual environment (.venv), created on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: train train-fashion test bench docs clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The compiled CPU kernels of the LTC and the CfC (C++ through jax.ffi), built against the
# installed jaxlib.
$(VENV)/.native: $(VENV)/.base $(wildcard liquidjax/_native/*.cc liquidjax/_native/*.h)
	$(PY) -m liquidjax._native
	touch $@

# The main job: train the default liquid model on CIFAR-10 from tfds.
# The first run prepares CIFAR-10 (download + conversion), which needs TensorFlow: installed here.
$(VENV)/.prepare: $(VENV)/.native
	$(PY) -m pip install -q -e '.[prepare]'
	touch $@

train: $(VENV)/.prepare
	$(VENV)/bin/liquidjax train $(ARGS)

# Offline demo on Fashion-MNIST (Debian package dataset-fashion-mnist).
train-fashion: $(VENV)/.native
	@test -d /usr/share/datasets/fashion-mnist || (echo "installing dataset-fashion-mnist (needs root)"; apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)
	$(VENV)/bin/liquidjax train --dataset fashion_mnist --data-dir /usr/share/datasets/fashion-mnist $(ARGS)

# Two worker processes (pytest-xdist), each given whole test files: one pytest process keeps about
# one core busy (mostly XLA compilation: CPU time ~ wall time), so a second worker can use a
# second core. TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= 2
test: $(VENV)/.native
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(ARGS)

bench: $(VENV)/.native
	$(PY) benchmarks/vs_ncps.py

docs: $(VENV)/.base
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) runs site
