"""Checks against this machine and its SLURM cluster, before anything starts.

The recipe's schema says what a recipe may hold; these say whether it can run *here*: its data files and local
weights exist, a hub id can be fetched (or is cached), the tracking store is one MLflow can open, and (on SLURM)
the partition exists and can hold the job. `gemctl train/run/sweep` and `--dry-run` stop at the first problem with
one line (exit 2) before DVC, MLflow or a job starts; `gemctl recipe validate` reports every check.

No network is touched unless the recipe names a hub id that is not in this machine's Hugging Face cache; with
HF_HUB_OFFLINE=1 not even then.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gem_stages.errors import InputError

from .launch.resources import Resources
from .project import Project
from .recipe import Recipe

# Starts of values that can only be paths (no hub id starts so). Relative paths are read from the project root,
# where DVC runs every stage.
_PATHLIKE = ("/", "./", "../", "~", ".")


@dataclass
class Result:
    """One line of `gemctl recipe validate`'s report: what was checked, and either what was found or the problem."""
    name: str
    ok: bool
    text: str


def _shown(text: str) -> str:
    """A user's value in a one-line message: control characters escaped."""
    return text if text.isprintable() else repr(text)[1:-1]


# ----- weights: local path or hub id ------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightsRef:
    kind: str  # "path" (a local directory) or "hub" (a Hugging Face repo id)
    where: str  # the directory (absolute) or the repo id
    subfolder: str | None  # diffusers' "repo::subfolder"


def classify(value: str, root: Path) -> WeightsRef:
    """A `pretrained` value as a local directory or a hub id. A value that looks like a path (./x, /x, ~/x, x/y/z)
    or names an existing directory is a path; anything else must be a valid hub repo id ("org/name" or "name")."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    ref, sep, sub = value.partition("::")
    subfolder = (sub or None) if sep else None
    local = root / os.path.expanduser(ref)  # os.path's leaves "~nobody" as it is (pathlib's raises)
    if ref.startswith(_PATHLIKE) or ref.count("/") > 1 or "\\" in ref or local.is_dir():
        return WeightsRef("path", str(local), subfolder)
    try:
        validate_repo_id(ref)
    except HFValidationError:
        raise InputError(f"'{_shown(value)}' is neither an existing directory nor a hub id such as "
                         "Qwen/Qwen3-VL-2B-Instruct") from None
    return WeightsRef("hub", ref, subfolder)


def _weights_settings(recipe: Recipe) -> list[tuple[str, str]]:
    """(dotted key, value) of every pretrained setting the model will load."""
    m = recipe.model
    out = [("model.backbone.pretrained", m.backbone.pretrained),
           ("model.depth.pretrained_transformer", m.depth.pretrained_transformer)]
    if m.depth.space == "latent":  # the pixel-space DiT has no VAE
        out.append(("model.depth.pretrained_vae", m.depth.pretrained_vae))
    return [(k, v) for k, v in out if v is not None]


def check_weights(recipe: Recipe, root: Path) -> str:
    """Every pretrained part is a local directory that exists, or a hub id that is cached or can be fetched."""
    found = []
    for key, value in _weights_settings(recipe):
        try:
            ref = classify(value, root)
        except InputError as e:
            raise InputError(f"{key}: {e}: fix it (a local directory, or a hub id)") from None
        if ref.kind == "path":
            d = Path(ref.where) / (ref.subfolder or "")
            if not d.is_dir():
                raise InputError(f"{key}='{_shown(value)}' is a local directory that does not exist "
                                 f"({_shown(str(d))}; relative paths are from the project root): fix the path, or "
                                 "give a hub id")
            found.append(f"{key} local")
        else:
            found.append(f"{key} {_check_hub(key, value, ref)}")
    return "; ".join(found) or "random init (no weights to load)"


def _check_hub(key: str, value: str, ref: WeightsRef) -> str:
    from huggingface_hub import constants, try_to_load_from_cache

    config = f"{ref.subfolder}/config.json" if ref.subfolder else "config.json"
    if isinstance(try_to_load_from_cache(ref.where, config), str):
        return "cached"
    default = (" (the default model, used when a recipe names none; `extends: tiny` gives a small random-init one)"
               if _is_default(key, value) else "")
    if "/" in ref.where:  # "org/name" might have been meant as a folder
        default += f" (and no folder {ref.where} exists in the project)"
    if constants.HF_HUB_OFFLINE:
        raise InputError(f"{key}='{_shown(value)}' is a hub id not in this machine's Hugging Face cache, and "
                         f"HF_HUB_OFFLINE is set{default}: download it first (hf download {ref.where}) or point "
                         f"{key} at a local copy")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(ref.where, timeout=10)  # one request, no retries: the download would retry for minutes
    except GatedRepoError:
        raise InputError(f"{key}='{_shown(value)}': the hub repo is gated: accept its terms on the hub and log in "
                         "(hf auth login)") from None
    except RepositoryNotFoundError:
        raise InputError(f"{key}='{_shown(value)}': no such hub repo (or it is private){default}: fix the id, or "
                         "give a local directory") from None
    except Exception as e:  # no network, DNS, proxy, TLS, the hub down: the download would fail the same way
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{key}='{_shown(value)}' is a hub id not in this machine's Hugging Face cache and the hub "
                         f"({constants.ENDPOINT}) cannot be reached ({reason}){default}: connect, or download it "
                         f"elsewhere and set {key} to the local directory") from None
    return "to download"


def _is_default(key: str, value: str) -> bool:
    from gem_models.config import GemModelConfig

    section, name = key.split(".")[1:]
    return getattr(getattr(GemModelConfig(), section), name) == value


# ----- data -------------------------------------------------------------------------------------------------------
def check_data(recipe: Recipe, root: Path) -> str:
    """Every file and folder the data stage reads exists (what is inside is the data stage's to check)."""
    data = recipe.data
    if data.source == "synth":
        return "built-in gem-synth (generated by the data stage)"

    def local(p: str) -> Path:
        return root / os.path.expanduser(p)  # an absolute path replaces the root

    for i, s in enumerate(data.files):
        key = f"data.files[{i}]"
        if not s.annotations:
            raise InputError(f"{key}.annotations is empty: give the path of the set's JSONL annotation file")
        ann = local(s.annotations)
        if not ann.is_file():
            what = "is a directory" if ann.is_dir() else "does not exist"
            raise InputError(f"annotation file '{_shown(s.annotations)}' ({key}.annotations) {what}: "
                             "fix the path")
        if s.data_path and not local(s.data_path).is_dir():
            raise InputError(f"image root '{_shown(s.data_path)}' ({key}.data_path) is not an existing directory: "
                             "fix the path")
        if s.depth_root and not (local(s.depth_root) / "depth").is_dir():
            raise InputError(f"depth root '{_shown(s.depth_root)}' ({key}.depth_root) has no 'depth' folder: "
                             "depth maps must be at <depth_root>/depth/<image basename>; fix the path or leave "
                             "depth_root empty")
        if s.depth_model:
            check_depth_model(s, key, local)
    if data.episodes_dir and not local(data.episodes_dir).is_dir():
        raise InputError(f"episodes directory '{_shown(data.episodes_dir)}' (data.episodes_dir) does not exist: "
                         "fix the path or leave it empty")
    return f"{len(data.files)} annotation set(s){' + episodes' if data.episodes_dir else ''} found"


def check_depth_model(s, key: str, local: Callable[[str], Path]) -> None:
    """A set labelled by the label_depth stage: its model is a depth estimator's folder, its image tree has images."""
    from gem_stages.label_depth import list_images, read_model_config

    model = local(s.depth_model)
    if not model.is_dir():
        raise InputError(f"depth model '{_shown(s.depth_model)}' ({key}.depth_model) is not an existing directory: "
                         "give the folder of a depth estimator saved with save_pretrained")
    try:
        read_model_config(model)
        list_images(local(s.data_path or str(Path(s.annotations).parent)))
    except InputError as e:  # its own line names the CLI's flags: name the recipe's keys instead
        what = str(e).replace("--model", f"{key}.depth_model").replace("--images", f"{key} image root")
        raise InputError(what) from None


# ----- tracking store ---------------------------------------------------------------------------------------------
def check_tracking(uri: str | None) -> str:
    """A --tracking-uri MLflow can open (checked before a job starts, not by the job's first log call)."""
    if not uri:
        return "the project's own sqlite store"
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", uri)
    if scheme and len(scheme.group(1)) > 1:  # one letter: a Windows drive
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        try:
            _tracking_store_registry.get_store_builder(uri)
        except Exception:
            schemes = sorted(s for s in _tracking_store_registry._registry if s)
            raise InputError(f"--tracking-uri '{_shown(uri)}': MLflow has no store for '{scheme.group(1)}:' URIs: "
                             f"use one of {', '.join(s + ':' for s in schemes)} or a local folder") from None
        if scheme.group(1) == "sqlite":  # gemctl creates the database's folder (tracking.setup): if it can
            db = uri.split(":///", 1)[-1]
            if db and db != ":memory:":
                folder = Path(db).parent
                there = next((d for d in (folder, *folder.parents) if d.exists()), Path("/"))
                if not there.is_dir() or not os.access(there, os.W_OK | os.X_OK):
                    raise InputError(f"--tracking-uri '{_shown(uri)}': the database's folder {_shown(str(folder))} "
                                     f"cannot be created ({_shown(str(there))} is not a writable folder): fix the "
                                     "URI (sqlite:////absolute/path/mlflow.db)")
        from .tracking_store import check_reachable

        check_reachable(uri)  # a server that answers, a database that accepts a connection
    return uri


# ----- SLURM partitions -------------------------------------------------------------------------------------------
_KEYVAL = re.compile(r"(\S+?)=(.*?)(?=\s+[A-Za-z][\w:/]*=|\s*$)")


def parse_scontrol(line: str) -> dict[str, str]:
    """One `scontrol show ... -o` line -> {key: value} (values may hold spaces, e.g. a node's OS=...)."""
    return dict(_KEYVAL.findall(line.strip()))


def parse_minutes(text: str) -> int | None:
    """SLURM time ("5" in slurm.conf is minutes; "00:05:00", "1-00:00:00", "UNLIMITED") -> minutes; None = none."""
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE", "NONE", "N/A", ""):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    h, m, s = ([0, 0] + parts)[-3:] if len(parts) > 1 else (0, parts[0], 0)
    return int(days or 0) * 1440 + h * 60 + m + (1 if s else 0)


def gres_gpus(gres: str) -> int:
    """GPUs in a node's Gres ("gpu:a100:8(S:0-1),shard:8" -> 8; "(null)" -> 0)."""
    return sum(int(n) for n in re.findall(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)", gres))


def _limit(text: str | None) -> int | None:
    return None if text is None or not text.isdigit() else int(text)


@dataclass
class Node:
    name: str
    cpus: int
    mem_mb: int
    gpus: int


@dataclass
class Partition:
    name: str
    default: bool
    state: str
    max_nodes: int | None  # None = no limit
    max_time_min: int | None
    max_cpus_per_node: int | None
    max_mem_per_node_mb: int | None
    nodes: list[Node] = field(default_factory=list)


def partitions(run: Callable[[list[str]], str] | None = None) -> dict[str, Partition]:
    """The cluster's partitions with their limits and nodes, from `scontrol show partition/node -o`."""
    run = run or _scontrol
    nodes = {}
    for line in run(["scontrol", "show", "node", "-o"]).splitlines():
        n = parse_scontrol(line)
        if "NodeName" not in n:
            continue
        mem = int(n.get("RealMemory", "0")) - int(n.get("MemSpecLimit", "0") or 0)
        nodes[n["NodeName"]] = (Node(n["NodeName"], int(n.get("CPUEfctv") or n.get("CPUTot", "0")), mem,
                                     gres_gpus(n.get("Gres", ""))), n.get("Partitions", "").split(","))
    out = {}
    for line in run(["scontrol", "show", "partition", "-o"]).splitlines():
        p = parse_scontrol(line)
        if "PartitionName" not in p:
            continue
        name = p["PartitionName"]
        out[name] = Partition(
            name=name, default=p.get("Default") == "YES", state=p.get("State", "UP"),
            max_nodes=_limit(p.get("MaxNodes")), max_time_min=parse_minutes(p.get("MaxTime", "UNLIMITED")),
            max_cpus_per_node=_limit(p.get("MaxCPUsPerNode")), max_mem_per_node_mb=_limit(p.get("MaxMemPerNode")),
            nodes=[node for node, parts in nodes.values() if name in parts])
    return out


def _scontrol(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=20).stdout


def slurm_answers() -> bool:
    """Whether SLURM's client tools are here and its controller answers (validate checks the cluster only then)."""
    if shutil.which("scontrol") is None or shutil.which("sbatch") is None:
        return False
    try:
        _scontrol(["scontrol", "ping"])
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
        return False
    return True


def check_cluster(res: Resources, parts: dict[str, Partition] | None = None) -> str:
    """The partition exists, is up, and has nodes and limits that can hold the job: what sbatch would refuse, or
    accept and leave pending forever."""
    if parts is None:
        from .launch import cluster

        cluster.require_slurm()
        try:
            parts = partitions()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            reason = (getattr(e, "stderr", "") or str(e)).strip().splitlines()[-1:] or [str(e)]
            raise InputError(f"could not read SLURM's partitions ({reason[0]}): check the controller, or use "
                             "--executor local") from None
    names = ", ".join(f"{p.name}{' (default)' if p.default else ''}" for p in parts.values())
    if res.partition is None:
        p = next((p for p in parts.values() if p.default), None)
        if p is None:
            raise InputError(f"SLURM has no default partition: set resources.partition to one of {names}")
    elif res.partition not in parts:
        raise InputError(f"unknown SLURM partition '{_shown(res.partition)}' (resources.partition): use one of "
                         f"{names}")
    else:
        p = parts[res.partition]
    where = f"partition '{p.name}'"
    if p.state != "UP":
        raise InputError(f"{where} is {p.state}: jobs there would wait until an admin brings it up; use another "
                         f"partition ({names})")
    tasks, cpus, mem_mb = res.ntasks_per_node, res.ntasks_per_node * res.cpus_per_task, None
    if res.mem_gb is not None:
        mem_mb = int(res.mem_gb * 1024)
    if p.max_nodes is not None and res.nodes > p.max_nodes:
        raise InputError(f"resources.nodes={res.nodes} but {where} allows at most {p.max_nodes} node(s) per job "
                         "(MaxNodes): lower resources.nodes or use another partition")
    if res.nodes > len(p.nodes):
        raise InputError(f"resources.nodes={res.nodes} but {where} has {len(p.nodes)} node(s): lower "
                         "resources.nodes or use another partition")
    cpu_cap = max(n.cpus for n in p.nodes) if p.nodes else 0
    if p.max_cpus_per_node is not None:
        cpu_cap = min(cpu_cap, p.max_cpus_per_node)
    if cpus > cpu_cap:
        raise InputError(f"{tasks} task(s) x resources.cpus_per_task={res.cpus_per_task} = {cpus} CPUs per node, "
                         f"but {where} gives a job at most {cpu_cap} per node: lower cpus_per_task (or the ranks "
                         "per node)")
    gpu_cap = max(n.gpus for n in p.nodes) if p.nodes else 0
    if res.gpus_per_node > gpu_cap:
        raise InputError(f"resources.gpus_per_node={res.gpus_per_node} but the nodes of {where} have at most "
                         f"{gpu_cap} GPU(s): lower it or use a GPU partition")
    if mem_mb is not None:
        mem_cap = max(n.mem_mb for n in p.nodes) if p.nodes else 0
        if p.max_mem_per_node_mb is not None:
            mem_cap = min(mem_cap, p.max_mem_per_node_mb)
        if mem_mb > mem_cap:
            raise InputError(f"resources.mem_gb={res.mem_gb:g} but {where} gives a job at most "
                             f"{mem_cap / 1024:.1f} GB per node: lower resources.mem_gb (null = the cluster's "
                             "default)")
    if p.max_time_min is not None and res.time_min > p.max_time_min:
        raise InputError(f"resources.time_min={res.time_min} exceeds the {p.max_time_min}-minute limit of {where} "
                         "(MaxTime): lower it (longer training resumes across requeues) or use another partition")
    fit = [n for n in p.nodes if n.cpus >= cpus and n.gpus >= res.gpus_per_node and n.mem_mb >= (mem_mb or 0)]
    if len(fit) < res.nodes:
        raise InputError(f"{where} has {len(fit)} node(s) with {cpus} CPUs, {res.gpus_per_node} GPU(s)"
                         f"{f' and {res.mem_gb:g} GB' if mem_mb else ''} at once, and the job asks for {res.nodes}: "
                         "ask for less per node or use another partition")
    return f"{where}: {len(p.nodes)} node(s), up to {cpu_cap} CPUs and {gpu_cap} GPU(s) per node"


# ----- all together -----------------------------------------------------------------------------------------------
def _checks(project: Project, recipe: Recipe, tracking_uri: str | None) -> list[tuple[str, Callable[[], str]]]:
    return [("data", lambda: check_data(recipe, project.root)),
            ("weights", lambda: check_weights(recipe, project.root)),
            ("tracking", lambda: check_tracking(tracking_uri))]


def stage_requests(recipe: Recipe, stages: list[str]) -> dict[str, Resources]:
    """The distinct resources `stages` ask for, keyed by where they are set: "resources" or
    "stage_resources.<stage>" (the data stage runs on one CPU task and is not a cluster request to check; the
    label_depth jobs before it are, keyed stage_resources.label_depth whether set there or not)."""
    from .depth_stage import labelled_sets, shard_resources

    out = {}
    for stage in stages:
        if stage == "data":  # what runs before it on the cluster: the label_depth stage's jobs, if it labels
            if labelled_sets(recipe.data):
                out["stage_resources.label_depth"] = shard_resources(recipe)
            continue
        own = getattr(recipe.stage_resources, stage, None)
        out.setdefault(f"stage_resources.{stage}" if own is not None else "resources", recipe.resources_for(stage))
    return out


def _check_request(key: str, res: Resources, executor: str) -> str:
    where = "" if key == "resources" else f"{key}: "
    try:
        if executor == "local" and res.nodes > 1:
            raise InputError(f"{key}.nodes={res.nodes}: the local executor runs on this machine only: use "
                             f"--executor slurm, or -o {key}.nodes=1")
        return check_cluster(res) if executor == "slurm" else ""
    except InputError as e:
        raise InputError(f"{where}{e}") from None


def check(project: Project, recipe: Recipe, executor: str, tracking_uri: str | None,
          stages: list[str] | tuple[str, ...] = ("stage1", "stage2", "stage3", "stage4"),
          resources: Resources | None = None) -> None:
    """Raise InputError (one line) at the first thing that would stop the run of `stages` on this machine or
    cluster. `resources`: what will be asked for, when not the stages' own (a sweep's --parallel)."""
    for _, run in _checks(project, recipe, tracking_uri):
        run()
    requests = {"resources": resources} if resources is not None else stage_requests(recipe, list(stages))
    for key, res in requests.items():
        _check_request(key, res, executor)


def report(project: Project, recipe: Recipe, tracking_uri: str | None,
           cluster: bool | None = None) -> tuple[list[Result], list[Result] | None]:
    """Every check's result, for `gemctl recipe validate`: this machine's, and the cluster's (None: not checked).
    `cluster`: None = check it when a SLURM controller answers here."""
    machine = []
    for name, run in _checks(project, recipe, tracking_uri):
        try:
            machine.append(Result(name, True, run()))
        except InputError as e:
            machine.append(Result(name, False, str(e)))
    if not (slurm_answers() if cluster is None else cluster):
        return machine, None
    cluster_results = []
    for key, res in stage_requests(recipe, ["stage1", "stage2", "stage3", "stage4"]).items():
        try:
            cluster_results.append(Result(key, True, _check_request(key, res, "slurm")))
        except InputError as e:
            cluster_results.append(Result(key, False, str(e)))
    return machine, cluster_results
