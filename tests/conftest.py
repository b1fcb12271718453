"""Fixtures shared across test domains."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_PREFIX = "gemctl-test-"  # job names; leftovers are cancelled at the end of the session


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs root (tests/cluster/start.sh runs the daemons as root)")
    try:
        r = subprocess.run([str(ROOT / "tests/cluster/start.sh")], capture_output=True, text=True, timeout=900, check=False)
    except FileNotFoundError as e:
        pytest.skip(f"cannot run tests/cluster/start.sh: {e}")
    if r.returncode == 3:  # start.sh: cannot run on this machine (not root, no apt-get, packages not installable)
        pytest.skip(f"SLURM test cluster unavailable: {r.stderr.strip().splitlines()[-1]}")
    if r.returncode != 0:
        pytest.fail(f"tests/cluster/start.sh failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    yield
    out = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, check=False).stdout
    ids = [line.split()[0] for line in out.splitlines() if line.split()[1].startswith(TEST_PREFIX)]
    if ids:
        subprocess.run(["scancel", *ids], check=False)
