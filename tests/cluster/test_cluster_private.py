"""The test cluster scripts: private to their directory, idempotent, and the two-node shape really spans two nodes."""

import hashlib
import os
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

import cloudpickle
import pytest

from tests.cluster import jobfns
from tests.conftest import CLUSTER_SCRIPTS, TEST_PREFIX, SlurmCluster

cloudpickle.register_pickle_by_value(jobfns)
pytestmark = pytest.mark.slurm


def script(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER_SCRIPTS / name), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900, check=False)


def tree(*roots: str) -> dict[str, tuple]:
    """path -> what it holds (file: size and digest, link: target, else its type) of everything under roots.
    Content, not mtime: an identical rewrite by someone else's older checkout of these scripts is not a change."""
    out = {}
    for root in roots:
        for d, dirs, files in os.walk(root):
            for name in dirs + files:
                p = os.path.join(d, name)
                try:
                    st = os.lstat(p)
                    if stat.S_ISREG(st.st_mode):
                        out[p] = ("file", st.st_size, hashlib.sha1(Path(p).read_bytes()).hexdigest())
                    elif stat.S_ISLNK(st.st_mode):
                        out[p] = ("link", os.readlink(p))
                    else:
                        out[p] = (stat.S_IFMT(st.st_mode),)
                except (FileNotFoundError, PermissionError):
                    continue
    return out


def protected(session: SlurmCluster) -> dict[int, str]:
    """pid -> name of the daemons a throwaway cluster must leave alone: the session's cluster (by its pid files)
    and whatever listens on a system SLURM's ports 6817-6819 (on a workstation: its real SLURM)."""
    pids = set(pidfiles(session.base).values())
    ss = subprocess.run(["ss", "-Hltnp", "( sport = :6817 or sport = :6818 or sport = :6819 )"],
                        capture_output=True, text=True, check=True).stdout
    pids |= {int(m) for m in re.findall(r"pid=(\d+)", ss)}
    return {p: Path(f"/proc/{p}/comm").read_text().strip() for p in pids if running(p)}


def pidfiles(base: Path) -> dict[str, int]:
    return {f.name: int(f.read_text()) for f in base.rglob("*.pid")}


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout


def config_from_controller(conf: Path) -> dict[str, str]:
    """`scontrol show config`: the settings the controller answering this slurm.conf actually runs with."""
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True,
                         env={**os.environ, "SLURM_CONF": str(conf)}).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in out.splitlines()) if _}


@pytest.mark.parametrize("shape", ["single", "multi"])
def test_start_and_stop_touch_only_their_own_directory(shape, slurm_cluster: SlurmCluster):
    # a throwaway cluster beside the session's, on its own ports and subnet; under /tmp, not pytest's tmp_path,
    # which the munge and mysql users may not enter
    prefix, port = f"/tmp/gemctl-slurm-test{os.getpid()}", {"single": 16857, "multi": 16867}[shape]
    env = {"GEMCTL_SLURM_BASE": prefix, "GEMCTL_SLURM_PORT": str(port), "GEMCTL_SLURM_NET": "10.214.0"}
    base = Path(f"{prefix}-{shape}")
    others = protected(slurm_cluster)
    assert others  # at least the session's cluster
    before = tree("/etc", "/run")
    try:
        check_start_and_stop(shape, env, base, port, slurm_cluster, others, before)
    finally:
        script("stop.sh", shape, "--wipe", env=env)  # nothing left running when an assertion fails


def check_start_and_stop(shape, env, base, port, session, others, before):
    r = script("start.sh", shape, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert tree("/etc", "/run") == before  # no /etc/slurm, no /run/munge, no `ip netns` (/run/netns)
    started = pidfiles(base)
    assert {"munged.pid", "mysqld.pid", "slurmdbd.pid", "slurmctld.pid"} <= started.keys()
    assert all(running(p) for p in started.values())
    assert set(started.values()).isdisjoint(others)
    # its clients reach its own controller, not the session's or a system one
    conf = config_from_controller(base / "etc/slurm.conf")
    assert conf["SlurmctldPort"] == str(port)
    assert conf["StateSaveLocation"] == str(base / "state/ctld")
    assert conf["AuthInfo"].startswith(f"socket={base}/munge/munge.socket")
    if shape == "multi":
        assert {f"ns-n{i}.pid" for i in (1, 2)} | {f"slurmd-n{i}.pid" for i in (1, 2)} <= started.keys()
        assert f"gemctl{port}-n1" in links() and f"gemctl{port}-n2" in links()

    again = script("start.sh", shape, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "starting" not in again.stdout and "creating" not in again.stdout and pidfiles(base) == started
    if shape == "multi":  # a node whose namespaces died comes back with a fresh slurmd, the other one untouched
        os.kill(started["ns-n2.pid"], signal.SIGKILL)
        r = script("start.sh", shape, env=env)
        assert r.returncode == 0 and "creating namespaces for n2" in r.stdout, r.stdout + r.stderr
        now = pidfiles(base)
        assert now["slurmd-n2.pid"] != started["slurmd-n2.pid"] and not running(started["slurmd-n2.pid"])
        assert {k: v for k, v in now.items() if not k.endswith("n2.pid")} == \
            {k: v for k, v in started.items() if not k.endswith("n2.pid")}
        started = now

    r = script("stop.sh", shape, "--wipe", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not any(running(p) for p in started.values())  # namespace holders included: the namespaces are gone
    assert not base.exists()
    assert f"gemctl{port}" not in links()  # bridge and veths removed
    # the session's cluster and any system SLURM still run, untouched
    assert protected(session) == others
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


@pytest.mark.skipif(os.geteuid() != 0, reason="not root: cannot switch to another user")
def test_start_without_root_cannot_run_and_says_why():
    for ci, rc in (("", 3), ("true", 1)):  # 3: the SLURM tests skip; in CI that is a failure instead
        cmd = ["runuser", "-u", "nobody", "--", "env", f"CI={ci}", "bash", str(CLUSTER_SCRIPTS / "start.sh")]
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert (r.returncode, r.stderr.strip()) == (rc, "gemctl test cluster: not root (the SLURM daemons run as root)")
