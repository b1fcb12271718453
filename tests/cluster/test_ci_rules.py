"""Under CI=true a skipped test fails the run (tests/conftest.py): a CI summary can only be green with 0 skipped."""

import os
import subprocess
import sys

from tests.conftest import ROOT


def run_pytest(tmp_path, ci: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_runtest_logreport, pytest_sessionfinish, pytest_terminal_summary  # noqa\n")
    (tmp_path / "test_probe.py").write_text(
        "import pytest\n\ndef test_runs():\n    pass\n\ndef test_skips():\n    pytest.skip('no cluster here')\n")
    env = {**os.environ, "CI": ci, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, check=False)


def test_a_skip_fails_a_ci_run_and_names_the_test(tmp_path):
    r = run_pytest(tmp_path, ci="true")
    assert r.returncode == 1, r.stdout
    assert "CI=true: 1 skipped test(s) fail this run:" in r.stdout
    assert "test_probe.py::test_skips: Skipped: no cluster here" in r.stdout


def test_a_skip_outside_ci_is_only_reported(tmp_path):
    r = run_pytest(tmp_path, ci="")
    assert r.returncode == 0, r.stdout
    assert "1 passed, 1 skipped" in r.stdout and "fail this run" not in r.stdout
