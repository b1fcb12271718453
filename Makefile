# make demo: set everything up and run the tiny recipe end to end on the CPU.
# make test: set up and run the test suite (starts the project's single-node SLURM for the SLURM tests).
# make fuzz: the recipe fuzz tests with 20,000 generated cases (make test runs 2,000).
VENV  ?= .venv
PY    := $(VENV)/bin/python
TORCH ?= torch==2.13.0
PIP   := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: setup egl demo test test-fast fuzz bench slurm-up slurm-down clean

# torch goes in first and is then held as a constraint: an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) "$(TORCH)"
	echo "$(TORCH)" > $(VENV)/torch-constraint.txt
	$(PIP) -c $(VENV)/torch-constraint.txt -e '.[dev,libero]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/gemctl run --recipe tiny

# both shapes of the test cluster (single node, two nodes), each from its own private directory
slurm-up:
	bash tests/cluster/start.sh single
	bash tests/cluster/start.sh multi

slurm-down:
	bash tests/cluster/stop.sh multi
	bash tests/cluster/stop.sh single

# start.sh exits 3 only where the cluster cannot run (not root, no apt-get) and never under CI=true: then the SLURM
# tests skip with that reason. Any other failed start fails the run. The two-node shape starts with its fixture.
# LIBERO renders headless through EGL (Mesa): the system libraries, where a machine lacks them and apt-get can add them
egl:
	@ldconfig -p | grep -q 'libEGL.so.1' || apt-get install -y -q libegl1 libegl-mesa0 libgl1-mesa-dri >/dev/null

test: setup egl
	@bash tests/cluster/start.sh single; rc=$$?; \
	if [ $$rc = 3 ]; then echo "note: no SLURM test cluster here; the SLURM tests will skip"; \
	elif [ $$rc != 0 ]; then exit $$rc; fi
	$(VENV)/bin/pytest

fuzz: setup
	GEMCTL_FUZZ_CASES=20000 $(VENV)/bin/pytest -q -s tests/recipes/test_recipe_fuzz.py

test-fast: setup
	$(VENV)/bin/pytest -m "not slow and not slurm and not gpu"

bench: setup
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf runs/*/resume .pytest_cache
