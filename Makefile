# The two Quickstart commands: `make demo` and `make test`. Each installs what it needs, idempotently.
PY ?= python3
STAMPS := .make-stamps
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
export FASHION_MNIST_DIR
export PYTHONUNBUFFERED := 1

.PHONY: demo demo-quick demo-seeds demo-curves demo-t2i test bench deps test-deps fashion-mnist gpu-check clean

$(STAMPS)/deps: requirements.txt
	$(PY) -m pip install -qq --disable-pip-version-check -r requirements.txt
	@mkdir -p $(STAMPS) && touch $@

$(STAMPS)/test-deps: $(STAMPS)/deps requirements-test.txt
	$(PY) -m pip install -qq --disable-pip-version-check -r requirements-test.txt
	@mkdir -p $(STAMPS) && touch $@

deps: $(STAMPS)/deps
test-deps: $(STAMPS)/test-deps

# Debian's dataset-fashion-mnist (60k train / 10k test, MIT); skipped when FASHION_MNIST_DIR already holds it.
fashion-mnist:
	@if ls $(FASHION_MNIST_DIR)/*train-images* >/dev/null 2>&1; then :; \
	else (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	      (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null)) && \
	     ls $(FASHION_MNIST_DIR)/*train-images* >/dev/null; fi

demo: deps fashion-mnist
	$(PY) -m demo --data $(FASHION_MNIST_DIR) --out demo_output

# the CCA fine-tune and all sampling with 3 run seeds (mean +- spread); reuses make demo's stages for the first seed
demo-seeds: deps fashion-mnist
	$(PY) -m demo --data $(FASHION_MNIST_DIR) --out demo_output --seeds 3

# CCA at 3-4 lambdas per family beside the CFG-scale curve (curves_<family>.png); reuses make demo's stages
demo-curves: deps fashion-mnist
	$(PY) -m demo --data $(FASHION_MNIST_DIR) --out demo_output --curves

# text-to-image CCA in miniature (demo_t2i/README.md)
demo-t2i: deps fashion-mnist
	$(PY) -m demo_t2i --data $(FASHION_MNIST_DIR) --out demo_t2i_output

demo-quick: deps fashion-mnist
	$(PY) -m demo --data $(FASHION_MNIST_DIR) --out demo_output_quick --quick

# pytest's exit code 5 ("no tests collected") is a failure here, on purpose.
test: test-deps fashion-mnist
	$(PY) -m pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; exit $$rc

# ORIGINAL_ROOT=/path/to/CCA (the original release, VAR/ and LlamaGen/ inside) adds the side-by-side comparison.
ORIGINAL_ROOT ?=
bench: test-deps
	$(PY) benchmarks/run.py
	@if [ -n "$(ORIGINAL_ROOT)" ]; then $(PY) benchmarks/vs_original.py --original-root "$(ORIGINAL_ROOT)"; \
	else echo "vs_original: skipped (make bench ORIGINAL_ROOT=/path/to/CCA compares with the original code)"; fi

gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf $(STAMPS) local_output demo_output demo_output_quick demo_t2i_output .pytest_cache
