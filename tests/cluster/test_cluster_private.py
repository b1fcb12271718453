"""The test cluster scripts: private to their directory, idempotent, and the two-node shape really spans two nodes."""

import os
import subprocess
import time
from pathlib import Path

import cloudpickle
import pytest

from tests.cluster import jobfns
from tests.conftest import CLUSTER_SCRIPTS, TEST_PREFIX, SlurmCluster

cloudpickle.register_pickle_by_value(jobfns)
pytestmark = pytest.mark.slurm

DAEMONS = {"munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd"}


def script(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER_SCRIPTS / name), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900, check=False)


def tree(*roots: str) -> dict[str, tuple[int, int]]:
    """path -> (mtime_ns, size) of everything under roots, symlinks not followed."""
    out = {}
    for root in roots:
        for d, dirs, files in os.walk(root):
            for name in dirs + files:
                p = os.path.join(d, name)
                try:
                    st = os.lstat(p)
                except FileNotFoundError:
                    continue
                out[p] = (st.st_mtime_ns, st.st_size)
    return out


def daemons() -> dict[int, str]:
    """pid -> name of every SLURM-stack daemon on the machine, whoever started it."""
    out = {}
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and (comm := (p / "comm").read_text().strip()) in DAEMONS:
                out[int(p.name)] = comm
        except OSError:
            continue
    return out


def pidfiles(base: Path) -> dict[str, int]:
    return {f.name: int(f.read_text()) for f in base.rglob("*.pid")}


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def config_from_controller(conf: Path) -> dict[str, str]:
    """`scontrol show config`: the settings the controller answering this slurm.conf actually runs with."""
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True,
                         env={**os.environ, "SLURM_CONF": str(conf)}).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in out.splitlines()) if _}


def test_single_node_start_writes_only_its_own_directory(slurm_cluster: SlurmCluster):
    # a throwaway single-node cluster beside the session's, on its own ports; under /tmp, not pytest's tmp_path,
    # which the munge and mysql users may not enter
    prefix = f"/tmp/gemctl-slurm-test{os.getpid()}"
    env = {"GEMCTL_SLURM_BASE": prefix, "GEMCTL_SLURM_PORT": "16857"}
    base = Path(f"{prefix}-single")
    others = daemons()
    before = tree("/etc", "/run")

    r = script("start.sh", "single", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert tree("/etc", "/run") == before
    started = pidfiles(base)
    assert {"munged.pid", "mysqld.pid", "slurmdbd.pid", "slurmctld.pid"} <= started.keys()
    assert all(running(p) for p in started.values())
    assert set(started.values()).isdisjoint(others)
    # its clients reach its own controller, not the session's or a system one
    conf = config_from_controller(base / "etc/slurm.conf")
    assert conf["SlurmctldPort"] == "16857"
    assert conf["StateSaveLocation"] == str(base / "state/ctld")
    assert conf["AuthInfo"].startswith(f"socket={base}/munge/munge.socket")

    again = script("start.sh", "single", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "starting" not in again.stdout and pidfiles(base) == started

    r = script("stop.sh", "single", "--wipe", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not any(running(p) for p in started.values())
    assert not base.exists()
    # every daemon that ran before (the session's cluster, any system SLURM) still runs, untouched
    assert {p: n for p, n in daemons().items() if p in others} == others
    assert tree("/etc", "/run") == before


def test_two_nodes_each_in_its_own_namespace(slurm_two_nodes: SlurmCluster):
    assert len(slurm_two_nodes.nodes) == 2
    pids = {n: int((slurm_two_nodes.base / f"run/slurmd-{n}.pid").read_text()) for n in slurm_two_nodes.nodes}
    nets = {n: os.readlink(f"/proc/{p}/ns/net") for n, p in pids.items()}
    assert len(set(nets.values())) == 2 and os.readlink("/proc/self/ns/net") not in nets.values()
    real_hosts = Path("/etc/hosts").read_text()
    for n, p in pids.items():
        hosts = Path(f"/proc/{p}/root/etc/hosts").read_text()  # the node's own view, through its mount namespace
        assert {n2 for n2 in slurm_two_nodes.nodes if any(line.split()[1:] == [n2] for line in hosts.splitlines())} \
            == set(slurm_two_nodes.nodes)
        assert not any(line.split()[1:] == [n] for line in real_hosts.splitlines())
    # a second start is a no-op
    r = script("start.sh", "multi")
    assert r.returncode == 0 and "starting" not in r.stdout and "creating" not in r.stdout, r.stdout + r.stderr


def test_two_node_job_runs_one_rank_per_node_and_all_reduces(slurm_two_nodes: SlurmCluster, monkeypatch, tmp_path):
    import submitit

    for k, v in slurm_two_nodes.env.items():
        monkeypatch.setenv(k, v)
    ex = submitit.SlurmExecutor(folder=tmp_path / "jobs")
    ex.update_parameters(job_name=f"{TEST_PREFIX}two-nodes", nodes=2, ntasks_per_node=1, mem="2G", time=10)
    job = ex.submit(jobfns.gloo_all_reduce)
    bound = time.monotonic() + 300  # a hang guard, not a speed claim
    while not job.done() and time.monotonic() < bound:
        time.sleep(1)
    assert job.done(), f"job {job.job_id} still {job.state}"
    ranks = sorted(job.results(), key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1]
    assert sorted(r["node"] for r in ranks) == sorted(slurm_two_nodes.nodes)  # two different nodes
    assert all(r["hostname"] == r["node"] for r in ranks)  # each rank sees its node's own hostname
    assert all(r["master_addr"] == ranks[0]["node"] for r in ranks)
    assert all(r["world_size"] == 2 and r["sum"] == 3.0 for r in ranks)  # 1 + 2: both ranks took part


def test_stop_removes_namespaces_and_start_brings_them_back(slurm_two_nodes: SlurmCluster):
    started = pidfiles(slurm_two_nodes.base)
    assert {f"ns-{n}.pid" for n in slurm_two_nodes.nodes} <= started.keys()
    before = tree("/etc", "/run")
    r = script("stop.sh", "multi")
    assert r.returncode == 0, r.stdout + r.stderr
    assert not any(running(p) for p in started.values())
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert "gemctl-" not in links  # bridge and veths gone
    # the session's fixture expects it up: start it again (the idempotent start from scratch)
    r = script("start.sh", "multi")
    assert r.returncode == 0, r.stdout + r.stderr
    out = subprocess.run(["sinfo", "-h", "-N", "-p", "debug", "-o", "%N %T"], capture_output=True, text=True,
                         env={**os.environ, **slurm_two_nodes.env}, check=True).stdout
    assert sorted(out.split()) == sorted([*slurm_two_nodes.nodes, "idle", "idle"])
    assert tree("/etc", "/run") == before  # no `ip netns` (it writes /run/netns), no system hosts file


@pytest.mark.skipif(os.geteuid() != 0, reason="not root: cannot switch to another user")
def test_start_without_root_cannot_run_and_says_why():
    for ci, rc in (("", 3), ("true", 1)):  # 3: the SLURM tests skip; in CI that is a failure instead
        cmd = ["runuser", "-u", "nobody", "--", "env", f"CI={ci}", "bash", str(CLUSTER_SCRIPTS / "start.sh")]
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert (r.returncode, r.stderr.strip()) == (rc, "gemctl test cluster: not root (the SLURM daemons run as root)")
