# make demo: set everything up and run the tiny recipe end to end on the CPU.
# make test: set up and run the test suite (starts the project's single-node SLURM for the SLURM tests).
VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.13.0
PIP   := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: setup demo test test-fast bench slurm-up slurm-down clean

# torch goes in first and is then held as a constraint: an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) "$(TORCH)"
	echo "$(TORCH)" > $(VENV)/torch-constraint.txt
	$(PIP) -c $(VENV)/torch-constraint.txt -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/gemctl run --recipe tiny

slurm-up:
	bash tests/cluster/start.sh

slurm-down:
	bash tests/cluster/stop.sh

test: setup
	@bash tests/cluster/start.sh || echo "warning: the test SLURM cluster did not start; SLURM tests will skip"
	$(VENV)/bin/pytest

test-fast: setup
	$(VENV)/bin/pytest -m "not slow and not slurm"

bench: setup
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf runs/*/resume .pytest_cache
