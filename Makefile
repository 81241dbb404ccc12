# Two entry points on a fresh machine (see README):
#   make demo   - create .venv, install, run the whole mission end to end
#   make test   - create .venv, install with test extras, run the whole test suite
PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
# torch is installed first so pip never pulls a CUDA build as a dependency; on a GPU machine
# use e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124", on Jetson
# VENV_FLAGS=--system-site-packages to reuse JetPack's torch (see README).
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= ros
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
DATA ?=
WEIGHTS ?=
PYTEST_ARGS ?=
# make bench DEVICE=cuda: every benchmark on the GPU
DEVICE ?= cpu

.PHONY: demo test install install-test bench soak clean

$(PY):
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)

$(VENV)/.installed-core: $(PY) setup.py
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install $(TORCH_SPEC)
	$(PIP) install -e ".[ros]"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-core setup.py
	$(PIP) install -e ".[ros,test]"
	$(PIP) install --no-deps patchnetvlad==0.1.8
	touch $@

install: $(VENV)/.installed-core
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed-core
	$(PY) -m vlad_localization.demo $(if $(DATA),--data $(DATA)) $(if $(WEIGHTS),--weights $(WEIGHTS))

test: $(VENV)/.installed-test
	$(PY) -m pytest test $(PYTEST_ARGS)

bench: $(VENV)/.installed-test
	$(PY) benchmarks/encode.py --device $(DEVICE)
	$(PY) benchmarks/rerank.py --device $(DEVICE)
	$(PY) benchmarks/mapdb.py --device $(DEVICE)
	$(PY) benchmarks/node.py --device $(DEVICE)

# ~5 min: 5000 frames at 30 Hz (5 % malformed) through the node; FRAMES=108000 for an hour
FRAMES ?= 5000
soak: $(VENV)/.installed-test
	$(PY) benchmarks/soak.py --device $(DEVICE) --frames $(FRAMES)

clean:
	rm -rf $(VENV) build install log *.egg-info
