# Entry points for humans and CI. Only python3 is assumed; the rest is installed here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
ARGS   ?=

.PHONY: install install-test serve test test-portability lint bench system-deps clean

# Serving needs the runtime dependencies only; the test extras (schemathesis, hypothesis,
# playwright, ...) come with the first target that runs tests or the linter.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[test]'
	touch $(TEST_STAMP)

install: $(STAMP)

install-test: $(TEST_STAMP)

# The checked-in comparison (docs/comparison.md) is what the page's Compare view shows.
serve: install
	$(BIN)/gatehouse serve --comparison-report docs/comparison/report.json $(ARGS)

# promtool/prometheus (metrics tests), hey (benchmarks), chromium (browser tests), and
# redis-server, nginx and postgresql (scale-out tests) come from Debian when missing: one
# apt-get run for whichever are.
system-deps:
	@missing=""; \
	  { command -v promtool >/dev/null && command -v prometheus >/dev/null; } || missing="$$missing prometheus"; \
	  command -v hey >/dev/null || missing="$$missing hey"; \
	  command -v chromium >/dev/null || missing="$$missing chromium"; \
	  command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	  { command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; } || \
	    missing="$$missing postgresql"; \
	  [ -z "$$missing" ] || \
	  { command -v apt-get >/dev/null || { echo "need$$missing: install them" >&2; exit 1; }; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	    $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; }

test: install-test system-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q $(ARGS)

# The tests marked `numerics` (trained or batched float results) once per CPU kernel family this
# machine offers. PyTorch picks AVX-512, AVX2 or plain kernels by CPU (ATEN_CPU_CAPABILITY forces
# one), and their results differ in the last bits: a test that holds only for one family's
# rounding fails on another machine. This runs them all here.
test-portability: install-test
	@for cap in default avx2 avx512; do \
	  got=$$(ATEN_CPU_CAPABILITY=$$cap $(BIN)/python -c \
	    'import torch; print(torch.backends.cpu.get_cpu_capability().lower())'); \
	  if [ "$$got" != "$$cap" ]; then echo "== $$cap: not offered by this CPU, skipped"; continue; fi; \
	  echo "== ATEN_CPU_CAPABILITY=$$cap"; \
	  ATEN_CPU_CAPABILITY=$$cap $(BIN)/python -m pytest -q -m numerics $(ARGS) || exit 1; \
	done

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install-test system-deps
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
