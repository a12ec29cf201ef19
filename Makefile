# `make demo` and `make test` work on a fresh machine with Python 3.10+:
# each creates .venv and installs zeropool into it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The stdlib contract also runs on every other CPython here of these versions
# (each in a .venv-3.X of its own); one that is missing is reported and skipped.
CONTRACT_PYTHONS := 3.10 3.11 3.12 3.13 3.14
CONTRACT_TESTS := tests/test_contract.py tests/test_crashes.py

.PHONY: demo test contract install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/python examples/demo.py

test: install
	$(BIN)/python -m pytest
	$(MAKE) --no-print-directory contract

# Each version's venv is made once, like .venv, and remade when pyproject.toml changes.
contract: install
	@default=$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	for version in $(CONTRACT_PYTHONS); do \
	    if [ "$$version" = "$$default" ]; then continue; fi; \
	    interpreter=$$(sh tests/find-python.sh $$version); \
	    if [ -z "$$interpreter" ]; then \
	        echo "contract: no Python $$version on this machine; skipped"; continue; \
	    fi; \
	    venv=.venv-$$version; \
	    if [ ! -f $$venv/.installed ] || [ pyproject.toml -nt $$venv/.installed ]; then \
	        echo "contract: setting up $$venv with $$interpreter"; \
	        "$$interpreter" -m venv $$venv && \
	        $$venv/bin/python -m pip install --quiet --upgrade pip && \
	        $$venv/bin/python -m pip install --quiet -e '.[test]' && \
	        touch $$venv/.installed || exit 1; \
	    fi; \
	    echo "contract: Python $$version"; \
	    $$venv/bin/python -m pytest -q $(CONTRACT_TESTS) || exit 1; \
	done

clean:
	rm -rf $(VENV) .venv-3.* build *.egg-info
