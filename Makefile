# `make demo` and `make test` work on a fresh machine with Python 3.10+:
# each creates .venv and installs zeropool into it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean

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

clean:
	rm -rf $(VENV) build *.egg-info
