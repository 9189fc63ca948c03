# prunekit: two commands for a learner, `make lab` and `make test`.
#
#   make lab      create .venv (once), install prunekit + JupyterLab, open the course
#   make test     create .venv (once), install the test tools, run every test (then the unit tests
#                 again under the NumPy reference backend)
#   make bench    install the benchmark extras (scipy, torch CPU) and run benchmarks/*.py
#   make clean    remove caches and build leftovers;  make distclean  also removes .venv
#
# Installs are skipped when nothing changed: a stamp file in .venv is newer than pyproject.toml.
# Choose the interpreter with e.g. `make test PYTHON=python3.11` (Python >= 3.10 is required).

PYTHON ?= python3
VENV   ?= .venv
JOBS   ?= 2
PYTEST_ARGS ?=

PY  := $(VENV)/bin/python
PIP := $(PY) -m pip

# Test folders that exist (notebooks/ may not yet).
TEST_PATHS := $(wildcard tests notebooks)
NOTEBOOK_DIR := $(if $(wildcard notebooks),notebooks,.)

.PHONY: lab lab-settings test bench clean distclean venv

venv: $(PY)

# Create the virtual environment, after checking the interpreter is new enough.
$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null || { \
	  echo "error: prunekit needs Python >= 3.10, but PYTHON=$(PYTHON) is:" \
	       "$$($(PYTHON) --version 2>&1 || echo 'not found')." >&2; \
	  echo "Install Python 3.11 and run e.g. 'make $(or $(MAKECMDGOALS),test) PYTHON=python3.11'." >&2; \
	  exit 1; }
	$(PYTHON) -m venv $(VENV)

# One stamp per set of extras; each is remade only when pyproject.toml is newer.
$(VENV)/.stamp-lab: pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[lab]'
	@touch $@

$(VENV)/.stamp-lab-test: pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[lab,test]'
	@touch $@ $(VENV)/.stamp-lab

$(VENV)/.stamp-bench: pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[bench]'
	@touch $@

# The project's JupyterLab settings (jupyter/overrides.json: no first-run "news" question, no
# update check) go to <JupyterLab app dir>/settings/overrides.d/prunekit.json, the namespaced
# defaults file that leaves a user's own overrides.json alone. LAB_SETTINGS_DIR empty: ask
# JupyterLab where its app dir is (it honours JUPYTERLAB_DIR); set it to install elsewhere.
LAB_SETTINGS_DIR ?=
LAB_START := $(if $(wildcard notebooks/00_start_here.ipynb),notebooks/00_start_here.ipynb,$(NOTEBOOK_DIR))

lab-settings:
	@dir='$(LAB_SETTINGS_DIR)'; \
	if [ -z "$$dir" ]; then \
	  dir=$$($(PY) -c 'import os; from jupyterlab.commands import get_app_dir; print(os.path.join(get_app_dir(), "settings"))') || exit 1; \
	fi; \
	mkdir -p "$$dir/overrides.d" && cp jupyter/overrides.json "$$dir/overrides.d/prunekit.json" && \
	echo "JupyterLab settings installed: $$dir/overrides.d/prunekit.json"

# Opens straight onto 00_start_here (a file argument: the server's root is its folder, notebooks/).
# (JupyterLab refuses to run as root without --allow-root: containers and CI machines run as root.)
lab: $(VENV)/.stamp-lab
	@$(MAKE) --no-print-directory lab-settings
	$(VENV)/bin/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_START)

# Unit, property and notebook tests in ONE pytest run, on $(JOBS) workers; then the unit
# tests once more under the NumPy reference backend (PRUNEKIT_BACKEND=numpy: every conv,
# pooling, optimizer and sparse op runs its readable NumPy version, numba is not used).
# Each worker (and each notebook kernel it starts) gets one BLAS/OpenMP/numba thread:
# $(JOBS) workers already fill the cores, and extra threads spinning on a busy
# machine made training 10-40x slower (measured; see benchmarks/BENCHMARKS.md).
# --dist loadfile keeps all cells of a notebook on one worker, in order;
# --nbval-current-env runs notebooks with this venv's Python.
# The second pass leaves out what would only repeat the first: notebooks (they stay on
# numba), the browser test, tests marked `numba` (they test a kernel itself and force the
# numba backend anyway), test_threads.py (numba's threads against OpenBLAS's) and
# test_backend.py (it pins the backends of each of its tests itself).
# Either pass failing fails `make test`; pytest's exit code 5 ("no tests collected") is
# not a failure while the course is young.
NUMPY_PASS_ARGS := -m "not browser and not numba" --ignore=tests/test_threads.py --ignore=tests/test_backend.py --ignore=tests/e2e

test: $(VENV)/.stamp-lab-test
	@export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1; \
	rc=0; $(PY) -m pytest -n $(JOBS) --dist loadfile --nbval-lax --nbval-current-env \
	  $(TEST_PATHS) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit code 5); nothing failed."; rc=0; fi; \
	rc2=0; if [ -d tests ]; then \
	  echo "== the unit tests again, under the NumPy reference backend (PRUNEKIT_BACKEND=numpy)"; \
	  start=$$(date +%s); \
	  PRUNEKIT_BACKEND=numpy $(PY) -m pytest -n $(JOBS) --dist loadfile $(NUMPY_PASS_ARGS) \
	    tests $(PYTEST_ARGS) || rc2=$$?; \
	  echo "(numpy backend pass: $$(( $$(date +%s) - start )) s)"; \
	  if [ $$rc2 -eq 5 ]; then rc2=0; fi; \
	fi; \
	if [ $$rc -ne 0 ]; then exit $$rc; fi; exit $$rc2

bench: $(VENV)/.stamp-bench
	@set -e; found=0; for f in benchmarks/*.py; do \
	  [ -e "$$f" ] || continue; found=1; \
	  echo "== $$f"; $(PY) "$$f"; \
	done; [ $$found -eq 1 ] || echo "no benchmarks/*.py yet"

clean:
	rm -rf .pytest_cache .hypothesis build dist *.egg-info prunekit.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf
	find . -path ./$(VENV) -prune -o -name .ipynb_checkpoints -type d -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV)
