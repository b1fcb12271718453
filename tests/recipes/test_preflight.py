"""Checks against this machine and cluster before anything starts (issue 7, points 5-7): train, --dry-run and
recipe validate refuse, with one line and exit 2, what a real run would only find out later."""

import socket
import subprocess
import threading

import pytest
import yaml

from tests.conftest import TEST_PREFIX
from tests.pipeline.project_copy import GEMCTL, env, gemctl, make_project


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("preflight"))


def recipe(project, name, settings):
    (project / "recipes" / f"{name}.yaml").write_text(yaml.safe_dump(settings) if settings else "")


def run(project, *args, extra_env=None):
    return subprocess.run([GEMCTL, *args], cwd=project, capture_output=True, text=True,
                          env={**env(), **(extra_env or {})})


def assert_refused_up_front(project, r, name, *needles):
    """One line naming the problem, exit 2, and nothing rendered, recorded or submitted."""
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (project / "runs" / name).exists()
    assert name not in (yaml.safe_load((project / "params.yaml").read_text()) or {}).get("recipes", [])
    assert not (project / ".gemctl" / "jobs" / name).exists()
    assert not (project / "dvc.lock").exists()


# ----- point 5: data files and local weights -----------------------------------------------------------------------
def test_missing_data_files_are_refused_by_validate_dry_run_and_train(project, tmp_path):
    recipe(project, "nodata", {"extends": "ci", "data": {"source": "files", "files": [
        {"name": "x", "annotations": str(tmp_path / "nope.jsonl")}]}})
    r = run(project, "recipe", "validate", "nodata")
    assert r.returncode == 2
    assert "ok schema: nodata" in r.stdout  # the schema is fine: the machine check is what fails, and says so
    assert "checks against this machine" in r.stdout and "FAIL data: annotation file" in r.stdout
    assert "nope.jsonl" in r.stdout
    for args in (["--dry-run"], []):
        r = run(project, "train", "stage1", "--recipe", "nodata", *args)
        assert_refused_up_front(project, r, "nodata", "nope.jsonl", "does not exist: fix the path")


def test_missing_image_root_and_depth_folder(project):
    d = project / "userdata" / "setA"
    d.mkdir(parents=True)
    (d / "train.jsonl").write_text("{}\n")
    recipe(project, "noimages", {"extends": "ci", "data": {"source": "files", "files": [
        {"name": "x", "annotations": "userdata/setA/train.jsonl", "data_path": "userdata/setA/images"}]}})
    r = run(project, "train", "stage1", "--recipe", "noimages", "--dry-run")
    assert_refused_up_front(project, r, "noimages", "userdata/setA/images", "data.files[0].data_path")
    recipe(project, "nodepth", {"extends": "ci", "data": {"source": "files", "files": [
        {"name": "x", "annotations": "userdata/setA/train.jsonl", "depth_root": "userdata/setA"}]}})
    r = run(project, "train", "stage1", "--recipe", "nodepth")
    assert_refused_up_front(project, r, "nodepth", "has no 'depth' folder")
    (d / "depth").mkdir()  # relative paths are read from the project root, as the data stage reads them
    r = run(project, "recipe", "validate", "nodepth")
    assert r.returncode == 0 and "ok data: 1 annotation set(s) found" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("value", ["./no-such-weights", "/no/such/weights", "~/no-such-weights-gemctl",
                                   "no/such/weights"])
def test_missing_local_weights_are_a_missing_path_not_a_hub_id(project, value):
    r = run(project, "train", "stage1", "--recipe", "ci", "-o", f"model.backbone.pretrained={value}",
            extra_env={"HF_HUB_OFFLINE": "1"})
    assert_refused_up_front(project, r, "ci", "model.backbone.pretrained", "is a local directory that does not exist")
    assert "Repo id" not in r.stderr


def test_home_relative_weights_that_pass_the_check_also_load(tmp_path, monkeypatch):
    import dataclasses

    from gem_models.config import tiny_config
    from gem_models.gem import GemModel
    from gemctl.preflight import classify

    home = tmp_path / "home"
    cfg = tiny_config("qwen3_vl")
    GemModel.build(cfg, seed=0).save(str(home / "w"))
    monkeypatch.setenv("HOME", str(home))
    backbone, dit = "~/w/backbone", "~/w/depth_generator::transformer"
    assert classify(backbone, tmp_path).kind == classify(dit, tmp_path).kind == "path"
    cfg = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, pretrained=backbone),
                              depth=dataclasses.replace(cfg.depth, pretrained_transformer=dit))
    model = GemModel.build(cfg, seed=1)  # loads both from the home folder, not from a hub
    saved = GemModel.load(str(home / "w"))
    for a, b in ((model.backbone, saved.backbone), (model.depth_generator.transformer, saved.depth_generator.transformer)):
        assert all((p == q).all() for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_existing_local_weights_pass_and_a_subfolder_is_checked(project):
    (project / "weights" / "sana" / "transformer").mkdir(parents=True)
    r = run(project, "recipe", "validate", "ci", "-o", "model.depth.pretrained_transformer=weights/sana::transformer")
    assert r.returncode == 0 and "model.depth.pretrained_transformer local" in r.stdout, r.stdout + r.stderr
    r = run(project, "recipe", "validate", "ci", "-o", "model.depth.pretrained_transformer=weights/sana::vae")
    assert r.returncode == 2 and "FAIL weights" in r.stdout and "sana/vae" in r.stdout


# ----- point 6: an empty recipe, a hub id without network, a bad tracking URI -------------------------------------
def test_empty_recipe_with_hub_offline_is_one_line(project, tmp_path):
    recipe(project, "empty", None)
    r = run(project, "train", "stage1", "--recipe", "empty",
            extra_env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    # an empty recipe is the defaults: the paper's GEM-2B, whose backbone is a hub id
    assert_refused_up_front(project, r, "empty", "model.backbone.pretrained='Qwen/Qwen3-VL-2B-Instruct'",
                            "HF_HUB_OFFLINE", "extends: tiny")
    r = run(project, "recipe", "validate", "empty", extra_env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 2 and "ok schema: empty" in r.stdout and "FAIL weights" in r.stdout


class Listener:
    """A local TCP port that accepts and counts connections, then closes them (an unreachable 'hub')."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self):
        self.sock.close()


def test_network_is_touched_only_for_a_hub_id_and_an_unreachable_hub_is_one_line(project, tmp_path):
    hub = Listener()
    try:
        hub_env = {"HF_ENDPOINT": f"http://127.0.0.1:{hub.port}", "HF_HOME": str(tmp_path / "hf")}
        r = run(project, "train", "stage1", "--recipe", "ci", "--dry-run", extra_env=hub_env)
        assert r.returncode == 0, r.stderr
        assert hub.connections == 0  # a random-init recipe never asks the hub
        r = run(project, "train", "stage1", "--recipe", "ci", "-o", "model.backbone.pretrained=someorg/somemodel",
                extra_env=hub_env)
        assert hub.connections >= 1
        assert_refused_up_front(project, r, "ci", "model.backbone.pretrained='someorg/somemodel'", "cannot be reached")
    finally:
        hub.close()


@pytest.mark.slow
def test_a_random_init_recipe_trains_without_asking_the_hub(tmp_path):
    project = make_project(tmp_path / "p")
    hub = Listener()
    try:
        r = run(project, "train", "stage1", "--recipe", "ci",
                extra_env={"HF_ENDPOINT": f"http://127.0.0.1:{hub.port}", "HF_HOME": str(tmp_path / "hf")})
        assert r.returncode == 0, r.stdout + r.stderr
        assert hub.connections == 0
    finally:
        hub.close()


def test_neither_path_nor_hub_id(project):
    r = run(project, "train", "stage1", "--recipe", "ci", "-o", "model.backbone.pretrained=not a repo!")
    assert_refused_up_front(project, r, "ci", "neither an existing directory nor a hub id")


@pytest.mark.parametrize("uri, needle", [
    ("foo://bar", "MLflow has no store for 'foo:' URIs"),
    ("sqlite:///{tmp}/a-file/store/mlflow.db", "folder {tmp}/a-file/store cannot be created ({tmp}/a-file is not a "
                                               "writable folder)")])
def test_bad_tracking_uri_is_refused_before_the_job_starts(project, tmp_path, uri, needle):
    (tmp_path / "a-file").write_text("")
    uri, needle = uri.format(tmp=tmp_path), needle.format(tmp=tmp_path)
    r = run(project, "train", "stage1", "--recipe", "ci", "--tracking-uri", uri)
    assert_refused_up_front(project, r, "ci", needle)
    assert not (project / "mlruns").exists()


def test_a_new_sqlite_store_in_a_folder_to_create_passes(project, tmp_path):
    # gemctl creates the folder of a sqlite store (as `tracking.setup` does): not a reason to refuse
    r = run(project, "recipe", "validate", "ci", "--tracking-uri", f"sqlite:///{tmp_path}/new/store/mlflow.db")
    assert r.returncode == 0 and f"ok tracking: sqlite:///{tmp_path}/new/store/mlflow.db" in r.stdout, r.stderr


# ----- point 7: a broken recipe file does not break `recipe list` -------------------------------------------------
def test_recipe_list_marks_broken_recipes_and_lists_the_others(tmp_path):
    project = make_project(tmp_path / "p")
    (project / "recipes" / "bad-yaml.yaml").write_text("stages: [\n")
    (project / "recipes" / "bad-key.yaml").write_text("extends: ci\nstages: {stage1: {lrr: 1}}\n")
    r = gemctl(project, "recipe", "list")
    assert r.returncode == 2  # the listing is complete; the exit code tells a script some recipe needs fixing
    rows = {line.split()[0]: line for line in r.stdout.splitlines()}  # one line per recipe
    assert set(rows) == {"ci", "tiny", "gem-2b", "gem-2b-release", "gem-8b", "bad-yaml", "bad-key"}, r.stdout
    assert rows["bad-yaml"] == "bad-yaml  broken: recipe file bad-yaml.yaml is not valid YAML (line 2): fix the syntax"
    assert rows["bad-key"].startswith("bad-key  broken: recipe 'bad-key': unknown key 'stages.stage1.lrr'")
    assert "broken" not in rows["tiny"] and rows["tiny"].startswith("tiny  Tiny random-init GEM")
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "2 broken recipe(s): bad-key, bad-yaml" in lines[0], r.stderr


def test_mem_gb_has_no_made_up_limit_in_the_schema(project):
    # the limit is the cluster's (checked against it on SLURM), not a number in the schema
    r = run(project, "recipe", "validate", "ci", "--schema-only", "-o", "resources.mem_gb=100000")
    assert r.returncode == 0 and "ok schema: ci" in r.stdout, r.stderr
    r = run(project, "recipe", "validate", "ci", "--schema-only", "-o", "resources.mem_gb=0")
    assert r.returncode == 2 and "resources.mem_gb=0 is out of range: must be >= 0.1" in r.stderr


# ----- point 5: the SLURM cluster's limits ------------------------------------------------------------------------
def _jobs_named(name):
    """Ids of every job named `name` that SLURM knows (queued, running or ended: accounting keeps them)."""
    out = subprocess.run(["sacct", "-n", "-X", "-a", "-S", "now-1days", "--name", name, "-o", "JobID"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def _node(key):
    """The test cluster's (single) node's value of `key` in `scontrol show node` (the limits come from there)."""
    out = subprocess.run(["scontrol", "show", "node", "-o"], capture_output=True, text=True, check=True).stdout
    return max(int(w.split("=")[1]) for w in out.split() if w.startswith(f"{key}="))


@pytest.mark.slurm
@pytest.mark.parametrize("overrides, needle", [
    (["resources.partition=no-such-partition"],
     "unknown SLURM partition 'no-such-partition' (resources.partition): use one of debug (default), short"),
    (["resources.nodes=2"], "resources.nodes=2 but partition 'debug' has 1 node(s)"),
    (["resources.cpus_per_task=4096"],
     "1 task(s) x resources.cpus_per_task=4096 = 4096 CPUs per node, but partition 'debug' gives a job at most {cpus}"),
    (["resources.gpus_per_node=1"], "resources.gpus_per_node=1 but the nodes of partition 'debug' have at most 0"),
    (["resources.mem_gb=100000"], "resources.mem_gb=100000 but partition 'debug' gives a job at most {mem} GB"),
    (["resources.partition=short", "resources.time_min=10", "resources.signal_delay_s=30"],
     "resources.time_min=10 exceeds the 5-minute limit of partition 'short' (MaxTime)"),
])
def test_cluster_limits_refused_before_anything_is_submitted(slurm_cluster, project, overrides, needle):
    needle = needle.format(mem=f"{_node('RealMemory') / 1024:.1f}", cpus=_node("CPUTot"))
    name = TEST_PREFIX.rstrip("-")  # a recipe name: any job it would submit carries the test prefix
    recipe(project, name, {"extends": "ci"})
    before = _jobs_named(f"stage1@{name}")
    args = [a for o in overrides for a in ("-o", o)]
    for extra in (["--dry-run"], []):
        r = run(project, "train", "stage1", "--recipe", name, "--executor", "slurm", *args, *extra)
        assert_refused_up_front(project, r, name, needle)
        assert "lower" in r.stderr or "use one of" in r.stderr  # names the fix, not only the limit
    assert _jobs_named(f"stage1@{name}") == before
    r = run(project, "recipe", "validate", name, *args)
    assert r.returncode == 2 and "checks against the SLURM cluster that answers here" in r.stdout
    assert "FAIL resources: " in r.stdout and needle in r.stdout
    assert "ok data" in r.stdout  # the machine checks pass: only the cluster's is marked


@pytest.mark.slurm
def test_validate_checks_the_cluster_only_when_one_answers(slurm_cluster, project, tmp_path):
    r = run(project, "recipe", "validate", "ci")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok resources: partition 'debug': 1 node(s)" in r.stdout
    conf = tmp_path / "slurm.conf"  # a cluster whose controller listens nowhere
    conf.write_text("ClusterName=x\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=1\nMessageTimeout=2\n"
                    "NodeName=n CPUs=1\nPartitionName=p Nodes=n\n")
    r = run(project, "recipe", "validate", "ci", extra_env={"SLURM_CONF": str(conf)})
    assert r.returncode == 0 and "checks against the SLURM cluster: skipped" in r.stdout, r.stdout + r.stderr
    r = run(project, "train", "stage1", "--recipe", "ci", "--executor", "slurm", "--dry-run",
            extra_env={"SLURM_CONF": str(conf)})
    assert_refused_up_front(project, r, "ci", "SLURM controller is not reachable")


# ----- the same checks guard `run` and `sweep` --------------------------------------------------------------------
def test_run_and_sweep_check_before_anything_starts(project, tmp_path):
    recipe(project, "nodata2", {"extends": "ci", "data": {"source": "files", "files": [
        {"name": "x", "annotations": str(tmp_path / "gone.jsonl")}]}})
    r = run(project, "run", "--recipe", "nodata2")
    assert_refused_up_front(project, r, "nodata2", "gone.jsonl", "does not exist")
    r = run(project, "sweep", "stage1", "--recipe", "ci", "-p", "stages.stage1.lr=1e-3,1e-4",
            "--tracking-uri", "foo://bar")
    assert_refused_up_front(project, r, "ci", "MLflow has no store for 'foo:' URIs")


@pytest.mark.slurm
def test_sweep_on_slurm_checks_the_partition_before_submitting(slurm_cluster, project):
    name = TEST_PREFIX + "sweep"
    recipe(project, name, {"extends": "ci", "resources": {"partition": "no-such-partition"}})
    r = run(project, "sweep", "stage1", "--recipe", name, "-p", "stages.stage1.lr=1e-3,1e-4", "--executor", "slurm")
    assert_refused_up_front(project, r, name, "unknown SLURM partition 'no-such-partition'")
    assert _jobs_named(f"stage1@{name}") == [] and _jobs_named(f"data@{name}") == []
