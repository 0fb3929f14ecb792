# The two entry points of the README: `make demo` (the main job) and `make test`.
# Both create or reuse .venv and install what they need, ROS 2 wheels included.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test lint format clean gpu bench-compare

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

# On a CUDA machine: the CUDA and cuDNN libraries onnxruntime-gpu needs, as NVIDIA's pip wheels
# (several GB; the default install stays CPU-sized). They are loaded before the sessions.
gpu: $(STAMP)
	$(BIN)/pip install -q "onnxruntime-gpu[cuda,cudnn]"
	$(BIN)/python -c "from deltaworld_ros.runtime.engine import open_engine; \
	print(open_engine('models/default').placement)"

# The package against the authors' code: make bench-compare DELTATOK=/path/to/deltatok-clone
bench-compare: $(STAMP)
	test -n "$(DELTATOK)" || (echo "set DELTATOK=<a clone of amazon-far/deltatok>" && false)
	$(BIN)/pip install -q -r requirements-reference.txt
	$(BIN)/deltaworld bench-compare --deltatok "$(DELTATOK)" --levers

format: $(STAMP)
	$(BIN)/ruff format deltaworld_ros test launch setup.py
	$(BIN)/ruff check --fix deltaworld_ros test launch setup.py

clean:
	rm -rf $(VENV) build install log
