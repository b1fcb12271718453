"""Asking SLURM what it has and what our jobs are doing: one sinfo call to check resources before submitting,
one sacct call (for any number of jobs) to read their states."""

import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from gem_stages.errors import InputError

from .resources import Resources

# States after which a job never runs again (anything else may still run: PENDING, RUNNING, REQUEUED, ...).
TERMINAL = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
    "REVOKED", "SPECIAL_EXIT", "PREEMPTED", "FINISHED",  # FINISHED: gone from squeue when sacct is unavailable
}
# Not a SLURM state: squeue answered without the job and accounting does not know it (slurmdbd lost or never got
# it). A waiter takes it as ended once it stays so for GONE_SETTLE_S, and reads the job's result files.
GONE = "GONE"
GONE_SETTLE_S = 60  # how long a job may read GONE or stay COMPLETING before a waiter takes it as ended


@dataclass
class Partition:
    name: str
    default: bool
    up: bool
    nodes: int
    max_time_min: int | None  # None = no limit
    cpus: int  # of the largest node
    mem_mb: int  # of the largest node
    gpus: int  # of the largest node


def _run(cmd: list[str], timeout: float = 20) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=timeout).stdout


def require_slurm() -> None:
    """Raise InputError unless the SLURM client tools are here and the controller answers."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        raise InputError("SLURM is not available here (no sbatch/sinfo on PATH); use --executor local")
    try:
        _run(["scontrol", "ping"], timeout=15)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        out = (getattr(e, "stdout", "") or "").strip().replace("\n", " ")
        raise InputError(f"SLURM controller is not reachable ({out or e}); check slurmctld or use --executor local") from None


def parse_minutes(text: str) -> int | None:
    """SLURM time string ("5:00" = 5 min, "2:00:00", "1-00:00:00", "infinite") -> minutes; None = no limit."""
    text = text.strip()
    if text.lower() in ("infinite", "unlimited", "n/a", ""):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    h, m, s = ([0, 0] + parts)[-3:] if len(parts) > 1 else (0, parts[0], 0)
    return int(days or 0) * 1440 + h * 60 + m + (1 if s else 0)


def _gpus(gres: str) -> int:
    return sum(int(n) for n in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", gres))


def partitions() -> dict[str, Partition]:
    """All partitions, each with its largest node (one sinfo line per group of identical nodes)."""
    out: dict[str, Partition] = {}
    for line in _run(["sinfo", "-h", "-o", "%P|%a|%l|%D|%c|%m|%G"]).splitlines():
        name, avail, limit, nnodes, cpus, mem, gres = line.split("|")
        default, name = name.endswith("*"), name.rstrip("*")
        p = out.setdefault(name, Partition(name, default, avail == "up", 0, parse_minutes(limit), 0, 0, 0))
        p.nodes += int(nnodes)
        p.cpus = max(p.cpus, int(cpus.rstrip("+")))
        p.mem_mb = max(p.mem_mb, int(mem.rstrip("+")))
        p.gpus = max(p.gpus, _gpus(gres))
    return out


def check(res: Resources) -> Partition:
    """Refuse, before submitting, what the cluster can never run (sbatch would accept some of it and leave the
    job pending forever). Returns the partition the job will go to."""
    require_slurm()
    parts = partitions()
    if res.partition is None:
        defaults = [p for p in parts.values() if p.default]
        if not defaults:
            raise InputError(f"SLURM has no default partition; set resources.partition (one of {', '.join(parts)})")
        p = defaults[0]
    elif res.partition not in parts:
        raise InputError(f"unknown SLURM partition '{res.partition}' (available: {', '.join(parts)})")
    else:
        p = parts[res.partition]
    where = f"partition '{p.name}'"
    if res.nodes > p.nodes:
        raise InputError(f"resources.nodes={res.nodes} but {where} has {p.nodes} node(s)")
    cpus = res.ntasks_per_node * res.cpus_per_task
    if cpus > p.cpus:
        raise InputError(
            f"{res.ntasks_per_node} task(s) x cpus_per_task={res.cpus_per_task} = {cpus} CPUs per node, "
            f"but the largest node in {where} has {p.cpus}"
        )
    if res.gpus_per_node > p.gpus:
        raise InputError(f"resources.gpus_per_node={res.gpus_per_node} but the nodes in {where} have {p.gpus} GPU(s)")
    if res.mem_gb is not None and res.mem_gb * 1024 > p.mem_mb:
        raise InputError(f"resources.mem_gb={res.mem_gb} but the largest node in {where} has {p.mem_mb / 1024:.1f} GB")
    if p.max_time_min is not None and res.time_min > p.max_time_min:
        raise InputError(f"resources.time_min={res.time_min} exceeds the {p.max_time_min}-minute limit of {where}")
    return p


def _expand(job_id: str) -> list[str]:
    """'12_[0-3,7%2]' -> ['12_0', ..., '12_3', '12_7'] (sacct collapses pending array elements)."""
    m = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", job_id)
    if not m:
        return [job_id]
    ids = []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        ids += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return ids


def query(job_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """State, ExitCode, NodeList, Start, End, Elapsed of each job (array element ids like '12_3' work), with one
    squeue and one sacct call. squeue is the controller's own view, fresh; sacct (accounting, a moment behind)
    knows finished jobs and exit codes. Without accounting (no slurmdbd), a job gone from the queue reads as
    FINISHED; with accounting that does not know it, GONE. When neither command answers, jobs are missing from
    the answer (callers poll again)."""
    job_ids = list(job_ids)
    ids = sorted({j.split("_")[0] for j in job_ids})
    if not ids:
        return {}
    try:
        live: dict[str, dict[str, str]] | None = _squeue()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, FileNotFoundError):
        live = None  # a transient controller hiccup: answer from accounting, or not at all (callers poll again)
    fields = ["JobID", "State", "ExitCode", "NodeList", "Start", "End", "Elapsed"]
    try:
        out = _sacct(ids, fields)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, FileNotFoundError):
        if live is None:
            return {}
        return {j: live.get(j, {"State": "FINISHED", "NodeList": "", "ExitCode": ""}) for j in job_ids}
    live_answered, live = live is not None, live or {}
    info: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        row = dict(zip(fields, line.split("|")))
        row["State"] = row["State"].split()[0] if row["State"] else "UNKNOWN"  # "CANCELLED by 0"
        if row["State"] not in TERMINAL:
            row["ExitCode"] = ""  # not final yet
        for jid in _expand(row["JobID"]):
            info[jid] = row
    for jid in job_ids:
        if jid not in info and jid.split("_")[0] in info:
            info[jid] = info[jid.split("_")[0]]  # an array cancelled before any element ran: one row, the array id
        if jid in live:
            accounted = info.get(jid, {})
            # a job whose steps ended can sit in COMPLETING for minutes (a slow epilog, an unkillable process):
            # accounting's final state is the answer then
            if not (live[jid]["State"] == "COMPLETING" and accounted.get("State") in TERMINAL):
                info[jid] = {**accounted, **live[jid]}
        elif jid not in info and live_answered:
            info[jid] = {"State": GONE, "NodeList": "", "ExitCode": ""}
    return info


def _sacct(ids: list[str], fields: list[str]) -> str:
    """Accounting's rows for these job ids (tests point it at ids it does not know)."""
    return _run(["sacct", "-X", "-P", "-n", "-o", ",".join(fields), "-j", ",".join(ids)])


def _squeue() -> dict[str, dict[str, str]]:
    out = _run(["squeue", "-h", "-r", "--me", "-o", "%i|%T|%N"])
    return {i: {"State": s, "NodeList": n} for i, s, n in (line.split("|") for line in out.splitlines())}
