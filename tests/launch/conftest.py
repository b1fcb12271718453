"""Launch tests. The SLURM ones run against a real single-node SLURM (the session fixture `slurm_cluster` in
tests/conftest.py); the debug and local cases of the same tests do not ask for it, so they run without SLURM."""

import time
from collections.abc import Callable
from pathlib import Path

import cloudpickle
import pytest

from tests.conftest import ROOT, TEST_PREFIX  # noqa: F401  (re-exported for the launch tests)
from tests.launch import jobfns

cloudpickle.register_pickle_by_value(jobfns)

BOUND_S = jobfns.BOUND_S  # how long a test waits for a condition at most: only guards against a hang


def wait_for(condition: Callable[[], object], what: str, bound_s: float = BOUND_S) -> object:
    """Poll condition() until it is truthy (returns its value); fail after bound_s, naming what never came."""
    deadline = time.monotonic() + bound_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)
    return value


def log_has(path: Path, text: str) -> bool:
    return path.exists() and text in path.read_text(errors="replace")


def needs_cluster_if_slurm(kind: str, request: pytest.FixtureRequest) -> None:
    """In a test parametrised over executors (slurm cases marked `slurm`): start the cluster for the slurm cases
    only. (pytest.param cannot carry usefixtures.)"""
    if kind == "slurm":
        request.getfixturevalue("slurm_cluster")


def _executor(request: pytest.FixtureRequest) -> str:
    needs_cluster_if_slurm(request.param, request)
    return request.param


SLURM = pytest.param("slurm", marks=pytest.mark.slurm)


def needs_slurm(test: Callable) -> Callable:
    """Mark a test that needs the SLURM test cluster (and start it for that test)."""
    return pytest.mark.slurm(pytest.mark.usefixtures("slurm_cluster")(test))


@pytest.fixture(params=["debug", "local", SLURM])
def kind(request: pytest.FixtureRequest) -> str:
    """Every executor; only the slurm case starts (and needs) the test cluster."""
    return _executor(request)


@pytest.fixture(params=["local", SLURM])
def job_kind(request: pytest.FixtureRequest) -> str:
    """The executors that run a real job (a process with signals, requeue and a code snapshot)."""
    return _executor(request)
