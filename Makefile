# The two entry points of the README: `make demo` (the main job) and `make test`.
# Both create or reuse .venv and install what they need, ROS 2 wheels included.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint format clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/deltaworld demo

test: $(STAMP)
	$(BIN)/ruff check deltaworld_ros test launch setup.py
	$(BIN)/ruff format --check deltaworld_ros test launch setup.py
	$(BIN)/pytest -q

format: $(STAMP)
	$(BIN)/ruff format deltaworld_ros test launch setup.py
	$(BIN)/ruff check --fix deltaworld_ros test launch setup.py

clean:
	rm -rf $(VENV) build install log
