"""Fixtures shared across test domains.

SLURM test clusters (tests/cluster/start.sh, see tests/cluster/README.md). Each shape runs from its own private
directory and is reached only through SLURM_CONF; nothing here touches a SLURM the project did not start.

- `slurm_cluster` (session): the single-node shape. From the moment this file is imported, the session's
  os.environ["SLURM_CONF"] points at it, so sbatch/squeue/sacct, gemctl subprocesses, DVC stage commands and the
  jobs themselves all use it (a SLURM_CONF from the caller's shell is overridden).
- `slurm_two_nodes` (session): two nodes, each slurmd in its own network namespace with its own address and
  hostname. A test switches to it with `for k, v in slurm_two_nodes.env.items(): monkeypatch.setenv(k, v)`.

Both yield a `SlurmCluster` (shape, base, conf, env, nodes: the node names in slurm.conf order; tests take names
from here, never hard-code them). Where a cluster cannot run here (not root, no apt-get) its tests skip with
that reason; as root or under CI=true a failed start fails them (start.sh never answers "cannot run" in CI).
Jobs submitted by tests are named with TEST_PREFIX; leftovers are cancelled when the session ends.
"""

import os
import signal
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Job names: gemctl-test-<session>-... Leftovers are cancelled at the end of the session, its own only (another
# session sharing the test cluster, e.g. a second checkout's `make test`, keeps its jobs). Subprocesses inherit it.
SESSION = os.environ.setdefault("GEMCTL_TEST_SESSION", uuid.uuid4().hex[:6])
TEST_PREFIX = f"gemctl-test-{SESSION}-"
CLUSTER_SCRIPTS = ROOT / "tests/cluster"


@dataclass(frozen=True)
class SlurmCluster:
    shape: str  # "single" or "multi"
    base: Path  # the private directory: config, state, logs, sockets, pid files
    nodes: list[str] = field(default_factory=list)  # node names, in slurm.conf order

    @property
    def conf(self) -> Path:
        return self.base / "etc/slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a process needs in its environment to use this cluster (clients, gemctl, jobs)."""
        return {"SLURM_CONF": str(self.conf)}


def cluster_base(shape: str) -> Path:
    """Where start.sh puts a shape (same rule as tests/cluster/lib.sh)."""
    return Path(f"{os.environ.get('GEMCTL_SLURM_BASE', '/tmp/gemctl-slurm')}-{shape}")


# Every SLURM client in this session talks to the project's single-node cluster, never to a system one.
os.environ["SLURM_CONF"] = str(cluster_base("single") / "etc/slurm.conf")
# A suite started in the background of a non-interactive shell inherits SIGINT ignored (POSIX), and Python then keeps
# ignoring it, as do the gemctl processes the tests start: every Ctrl-C test would wait for ever. Take SIGINT as a
# process started from a terminal does.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# the digest cache of data and benchmark files: one of the test session's own, not the user's ~/.cache/gemctl
os.environ["GEMCTL_DIGEST_CACHE"] = str(Path(tempfile.mkdtemp(prefix="gemctl-test-digests-")) / "digests.sqlite")


def start_cluster(shape: str) -> SlurmCluster:
    """Start a shape (a no-op when up) or skip/fail as the module docstring says."""
    r = subprocess.run(["bash", str(CLUSTER_SCRIPTS / "start.sh"), shape], capture_output=True, text=True,
                       timeout=900, check=False)
    if r.returncode == 3 and os.environ.get("CI") != "true":  # cannot run on this machine (not root, no apt-get)
        pytest.skip(f"SLURM test cluster ({shape}) cannot run here: {(r.stderr.strip().splitlines() or ['no reason given'])[-1]}")
    if r.returncode != 0:
        pytest.fail(f"tests/cluster/start.sh {shape} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    base = cluster_base(shape)
    nodes = [line.split()[0].removeprefix("NodeName=") for line in (base / "etc/slurm.conf").read_text().splitlines()
             if line.startswith("NodeName=")]
    return SlurmCluster(shape=shape, base=base, nodes=nodes)


def cancel_test_jobs(cluster: SlurmCluster) -> None:
    env = {**os.environ, **cluster.env}
    out = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, env=env, check=False).stdout
    ids = [line.split()[0] for line in out.splitlines() if line.split()[1].startswith(TEST_PREFIX)]
    if ids:
        subprocess.run(["scancel", *ids], env=env, check=False)


@pytest.fixture(scope="session")
def slurm_cluster():
    cluster = start_cluster("single")
    yield cluster
    cancel_test_jobs(cluster)


@pytest.fixture(scope="session")
def slurm_two_nodes():
    cluster = start_cluster("multi")
    yield cluster
    cancel_test_jobs(cluster)


# Under CI=true a skipped test fails the run: a CI summary shows 0 skipped, so no claim goes untested unnoticed.
_skips: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skips.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("CI") == "true" and _skips and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if os.environ.get("CI") == "true" and _skips:
        terminalreporter.write_line(f"CI=true: {len(_skips)} skipped test(s) fail this run:", red=True)
        for s in _skips:
            terminalreporter.write_line(f"  {s}", red=True)


@pytest.fixture
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared, busy CPU several threads spin against each
    other (measured: ~8x slower with 2 threads under load). Restored afterwards for other suites. Use it with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
