# Greenhouse developer commands. `make demo` and `make test` bootstrap .venv themselves.
PYTHON ?= python3
# Extras installed into .venv; CI adds torch (see .ci/run).
EXTRAS ?= dev,examples
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo demo-bank demo-local test lint typecheck proto bench clean-venv FORCE
FORCE:

# Reinstall when pyproject.toml changes or a different EXTRAS set is asked for.
INSTALLED := $(shell cat $(STAMP) 2>/dev/null)
$(STAMP): pyproject.toml $(if $(filter $(EXTRAS),$(INSTALLED)),,FORCE)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { $(PYTHON) -m pip install --user virtualenv && $(PYTHON) -m virtualenv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	@echo "$(EXTRAS)" > $(STAMP)

# A real federation on this machine: CA, SuperLink, three hospital SuperNodes, mTLS.
demo: $(STAMP)
	$(PY) examples/demo.py

# The same federation for the bank example: three banks, DP-SGD (Opacus), record-level ε.
# It needs the torch extra; a second stamp installs it on top, so `make demo` stays as it is.
TORCH_STAMP := $(VENV)/.installed-torch
$(TORCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[$(EXTRAS),torch]'
	@touch $@

demo-bank: $(TORCH_STAMP)
	$(PY) examples/demo.py bank

# The same app in one process (the data scientist's inner loop).
demo-local: $(STAMP)
	$(VENV)/bin/greenhouse run --local examples/hospital --nodes 3

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy appliance secagg dp audit certs

# Regenerate the committed protobuf code (tests/unit/appliance/test_proto_fresh.py fails when stale).
proto: $(STAMP)
	$(PY) -m appliance.proto.generate

bench: $(STAMP)
	$(PY) benchmarks/wire.py

clean-venv:
	rm -rf $(VENV)
