"""Hypothesis settings for the recipe fuzz tests, and the count of fuzz cases run, printed in the summary."""

import os

import pytest
from hypothesis import HealthCheck, settings

# GEMCTL_FUZZ_CASES cases in all (`make test`: 2,000; `make fuzz`: 20,000). Derandomized: CI runs the same cases
# every time, and a failure is reproducible from its printed minimal example.
FUZZ_CASES = int(os.environ.get("GEMCTL_FUZZ_CASES", "2000"))
settings.register_profile(
    "gemctl-fuzz", max_examples=FUZZ_CASES, deadline=None, derandomize=True, database=None, print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

_cases_run = {"files": 0, "overrides": 0}
_outcomes = {"valid": 0, "refused": 0}


@pytest.fixture(scope="session")
def fuzz_cases() -> dict[str, int]:
    """Fuzz tests add the cases they ran here (session-scoped: hypothesis runs many cases per test call)."""
    return _cases_run


@pytest.fixture(scope="session")
def fuzz_outcomes() -> dict[str, int]:
    """How many fuzz cases validated and how many were refused (both must occur for the fuzzing to mean much)."""
    return _outcomes


def pytest_terminal_summary(terminalreporter):
    total = sum(_cases_run.values())
    if total:
        parts = ", ".join(f"{n} {kind}" for kind, n in _cases_run.items())
        terminalreporter.write_line(f"recipe fuzz: {total} cases run ({parts}; {_outcomes['valid']} valid, "
                                    f"{_outcomes['refused']} refused); GEMCTL_FUZZ_CASES={FUZZ_CASES}")
