"""`gemctl lineage` and `gemctl runs` on the tiny pipeline, field by field against what the project holds (dvc.lock,
git HEAD, the stages' summaries, results.json), and their bad input.

The module's pipeline, run once: stages 1-3 of the ci recipe, gem-synth-qa scored on stage 3, a two-point stage-3
sweep, then stage 1 again on other data (-o data.num_scenes=10): two stage-1 runs differing in one recipe key and
one data digest."""

import json
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import yaml
from PIL import Image

from gemctl.lineage import READER_ENV
from tests.pipeline.project_copy import GEMCTL, env, gemctl, make_project

pytestmark = pytest.mark.slow


def lock_digest(lock_text: str, path: str) -> str:
    for stage in yaml.safe_load(lock_text)["stages"].values():
        for out in stage.get("outs", []):
            if out["path"] == path:
                return out["md5"]
    raise AssertionError(f"{path} not in dvc.lock")


def summary(project, stage):
    return json.loads((project / "runs" / "ci" / stage / "summary.json").read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("lineage"))
    for args in (("train", "stage3", "--recipe", "ci"), ("eval", "gem-synth-qa", "--recipe", "ci", "--limit", "4"),
                 ("sweep", "stage3", "--recipe", "ci", "-p", "stages.stage3.lr=1e-4,2e-4")):
        r = gemctl(project, *args)
        assert r.returncode == 0, r.stdout + r.stderr
    before = {"lock": (project / "dvc.lock").read_text(), "data": summary(project, "data"),
              **{s: summary(project, s) for s in ("stage1", "stage2", "stage3")}}
    r = gemctl(project, "train", "stage1", "--recipe", "ci", "-o", "data.num_scenes=10")
    assert r.returncode == 0, r.stdout + r.stderr
    return project, before


@pytest.fixture(params=["sqlite", "mlflow"])
def reader(request, monkeypatch):
    """Lineage reads the project's sqlite store from its tables, or through MLflow (as it reads a server): the
    tests that take this fixture run on both."""
    monkeypatch.setenv(READER_ENV, request.param)
    return request.param


def lineage_json(project, *args):
    r = gemctl(project, "lineage", *args, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def test_upstream_field_by_field(built, reader):
    project, before = built
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    data_digest = lock_digest(before["lock"], "runs/ci/data")
    s3 = before["stage3"]
    tree = lineage_json(project, "stage3@ci")
    assert tree["run_id"] == s3["mlflow_run_id"] and tree["stage"] == "stage3"
    assert tree["recipe"] == "ci" and tree["recipe_hash"] == s3["recipe_hash"]
    assert tree["params"]["stages.stage3.steps"] == "3" and tree["params"]["data.num_scenes"] == "12"
    assert tree["models"] == [{"id": s3["model_id"], "name": "ci-stage3", "registered": "ci-stage3 v1",
                               "checkpoint": str((project / "runs/ci/stage3/model").resolve())}]
    chain = [tree, tree["parent"], tree["parent"]["parent"]]
    assert [n["stage"] for n in chain] == ["stage3", "stage2", "stage1"] and "parent" not in chain[-1]
    for n, stage in zip(chain, ("stage3", "stage2", "stage1")):
        assert n["run_id"] == before[stage]["mlflow_run_id"]
        assert n["models"][0]["id"] == before[stage]["model_id"]
        assert n["code"]["commit"] == head and n["code"]["dirty"] is False
        assert n["code"]["versions"]["mlflow"]
        [data] = n["data"]
        assert data["digest"] == data_digest and data["name"] == "gem-synth:ci"
        assert data["run_id"] == before["data"]["mlflow_run_id"]  # the data run that prepared this version
    # stage 3's parent checkpoint is stage 2's
    assert tree["parent_model_id"] == before["stage2"]["model_id"]
    assert tree["parent_checkpoint"] == str((project / "runs/ci/stage2/model").resolve())
    # the same run, named by its checkpoint folder, its model folder, a run id prefix or a model id prefix
    for target in ("runs/ci/stage3", "runs/ci/stage3/model", s3["mlflow_run_id"][:12], s3["model_id"][:14]):
        assert lineage_json(project, target)["run_id"] == s3["mlflow_run_id"], target


def test_downstream_scores_and_sweep_points(built, reader):
    project, before = built
    results = json.loads((project / "runs/ci/eval/gem-synth-qa/results.json").read_text())
    down = lineage_json(project, before["stage3"]["mlflow_run_id"], "--down")
    [score] = down["scores"]  # stage 3's evaluation scores listed under it
    assert score["kind"] == "eval" and score["benchmark"] == "gem-synth-qa"
    assert score["model_id"] == before["stage3"]["model_id"]
    assert score["metrics"][f"gem-synth-qa/{results['metric']}"] == pytest.approx(results["overall"])
    assert score["metrics"]["gem-synth-qa/items"] == 4
    # stage 2's children: the pipeline's stage 3, and the sweep with its two points under it
    down2 = lineage_json(project, "stage2@ci", "--down")
    kids = {c["kind"]: c for c in down2["children"]}
    assert kids["stage"]["run_id"] == before["stage3"]["mlflow_run_id"] and kids["stage"]["scores"]
    sweep = kids["sweep"]
    points = {p["recipe_hash"]: p for p in sweep["children"]}
    folders = {d.name for d in (project / "runs/ci/sweeps/stage3").iterdir() if d.is_dir()}
    assert set(points) == folders and len(points) == 2
    for h, p in points.items():
        assert p["sweep"]["id"] == sweep["sweep"]["id"] and p["sweep"]["run_id"] == sweep["run_id"]
        assert p["models"][0]["checkpoint"] == str((project / "runs/ci/sweeps/stage3" / h / "out/model").resolve())
    assert {p["params"]["stages.stage3.lr"] for p in points.values()} == {"0.0001", "0.0002"}
    # a sweep point's upstream names its sweep, and its parent is stage 2's checkpoint
    h = sorted(points)[0]
    up = lineage_json(project, points[h]["run_id"])
    assert up["sweep"]["id"] == sweep["sweep"]["id"] and up["sweep"]["point"] == h
    assert up["parent"]["run_id"] == before["stage2"]["mlflow_run_id"]
    # the rich tree says the same
    r = gemctl(project, "lineage", "stage2@ci", "--down")
    assert r.returncode == 0 and f"sweep {sweep['sweep']['id']}" in r.stdout and "eval gem-synth-qa" in r.stdout


def test_diff_shows_exactly_the_recipe_key_and_the_data_digest(built, reader):
    project, before = built
    old, new = before["stage1"], summary(project, "stage1")
    assert old["mlflow_run_id"] != new["mlflow_run_id"]
    d = lineage_json(project, "diff", old["mlflow_run_id"], "stage1@ci")
    assert d["recipe"] == {"data.num_scenes": ["12", "10"]}
    assert d["data"] == {"stage1 gem-synth:ci": [lock_digest(before["lock"], "runs/ci/data"),
                                                 lock_digest((project / "dvc.lock").read_text(), "runs/ci/data")]}
    assert d["code"] == {} and d["parents"] == {}
    assert (d["a"]["run_id"], d["b"]["run_id"]) == (old["mlflow_run_id"], new["mlflow_run_id"])
    r = gemctl(project, "lineage", "diff", old["mlflow_run_id"][:10], "stage1@ci")
    assert r.returncode == 0 and "data.num_scenes" in r.stdout and "same: code, parent checkpoint" in r.stdout
    # two stage-3 runs (the pipeline's and a sweep point) share their parents and data: only settings differ
    point = next(p for p in (project / "runs/ci/sweeps/stage3").iterdir() if p.is_dir())
    d = lineage_json(project, "diff", "stage3@ci", str(point / "out"))
    assert set(d["recipe"]) == {"stages.stage3.lr"} and d["data"] == {} and d["parents"] == {}
    assert d["a"]["scores"] and not d["b"]["scores"]  # the pipeline's stage 3 was scored, the point was not


def test_both_readers_give_the_same_lineage(built, monkeypatch):
    """The sqlite reader and MLflow answer field for field alike: upstream, downstream (a stage, the data run, a
    sweep), diff, and the ambiguous prefix's error."""
    project, before = built
    sweep = lineage_json(project, "stage2@ci", "--down")["children"]
    sweep_id = next(c["run_id"] for c in sweep if c["kind"] == "sweep")
    queries = [("stage3@ci",), ("stage2@ci", "--down"), ("data@ci", "--down"), (before["data"]["mlflow_run_id"], "--down"),
               (sweep_id,), (sweep_id, "--down"), ("diff", before["stage1"]["mlflow_run_id"], "stage1@ci"),
               ("runs/ci/stage2/model",), (before["stage3"]["model_id"][:14], "--down")]
    answers = {}
    for which in ("sqlite", "mlflow"):
        monkeypatch.setenv(READER_ENV, which)
        answers[which] = [lineage_json(project, *q) for q in queries]
    for q, a, b in zip(queries, answers["sqlite"], answers["mlflow"]):
        assert a == b, q
    assert answers["sqlite"][2]["children"]  # the data run's stage-1 runs were found (by dataset digest)


def test_sqlite_reader_never_imports_mlflow(built, tmp_path):
    """On the project's sqlite store, lineage (upstream, --down, diff, --graph) imports neither mlflow nor pandas:
    that import and opening MLflow's store were 2 s of every command."""
    project, before = built

    def imported(reader, *args):
        r = subprocess.run([sys.executable, "-X", "importtime", GEMCTL, "lineage", *args], cwd=project,
                           capture_output=True, text=True, env={**env(), READER_ENV: reader})
        assert r.returncode == 0, r.stdout + r.stderr
        return {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in r.stderr.splitlines()
                if line.startswith("import time:")}

    for args in (("stage3@ci", "--json"), ("stage2@ci", "--down", "--graph", str(tmp_path / "g.png")),
                 ("diff", before["stage1"]["mlflow_run_id"], "stage1@ci")):
        assert not imported("sqlite", *args) & {"mlflow", "pandas"}, args
    assert "mlflow" in imported("mlflow", "stage3@ci", "--json")  # what this test would see if it did


def test_graph_png_and_svg(built, tmp_path):
    project, before = built
    png, svg = tmp_path / "up.png", tmp_path / "down.svg"
    r = gemctl(project, "lineage", "stage3@ci", "--graph", str(png))
    assert r.returncode == 0, r.stderr
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 100 and im.height > 100
        im.load()
    r = gemctl(project, "lineage", "stage2@ci", "--down", "--graph", str(svg))
    assert r.returncode == 0, r.stderr
    root = ET.parse(svg).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    texts = [t.text for t in root.iter(f"{ns}text")]
    # stage 2, its stage 3 and that one's evaluation, the sweep and its two points: six boxes, five arrows
    assert len(root.findall(f".//{ns}g")) == 6 and len(root.findall(f"{ns}line")) == 5
    assert any(t.startswith("stage2@ci") for t in texts) and "eval gem-synth-qa" in texts


def test_runs_table_filters_and_sorts(built):
    project, before = built

    def runs(*args):
        r = gemctl(project, "runs", "--json", *args)
        assert r.returncode == 0, r.stdout + r.stderr
        return json.loads(r.stdout)

    every = runs()
    assert len(every) == 10  # data x2, stage1 x2, stage2, stage3, eval, sweep, 2 points
    stage3 = runs("--stage", "stage3", "--recipe", "ci")
    assert len(stage3) == 3 and {r["stage"] for r in stage3} == {"stage3"}
    [point] = runs("--where", "params.stages.stage3.lr = 1e-4 and tags.gemctl.sweep != ''")
    assert point["params"]["stages.stage3.lr"] == "0.0001" and point["tags"]["gemctl.sweep"]
    # a stage run carries its checkpoint's scores: --where reaches them
    scored = runs("--where", "metrics.`gem-synth-qa/accuracy` >= 0 and attributes.kind = stage3")
    assert [r["run_id"] for r in scored] == [before["stage3"]["mlflow_run_id"]]
    by_lr = runs("--stage", "stage3", "--sort", "-params.stages.stage3.lr")
    assert [r["params"]["stages.stage3.lr"] for r in by_lr] == ["0.001", "0.0002", "0.0001"]
    r = gemctl(project, "runs", "--stage", "stage3")
    assert r.returncode == 0 and "3 run(s)" in r.stdout and "stage3@ci" in r.stdout


def one_line_error(r, *needles):
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr


def test_bad_input(built, tmp_path):
    project, before = built
    one_line_error(gemctl(project, "lineage", "nothing-like-this"), "stage3@ci", "stage1@ci", "data@ci")
    one_line_error(gemctl(project, "lineage", "stage3@other"), "no run of stage3@other", "stage3@ci")
    # an ambiguous run id prefix lists the runs it could be
    ids = [r["run_id"] for r in json.loads(gemctl(project, "runs", "--json").stdout)]
    prefix = next(p for n in range(1, 32) for p in sorted({i[:n] for i in ids})
                  if sum(i.startswith(p) for i in ids) > 1)
    both = [i for i in ids if i.startswith(prefix)]
    one_line_error(gemctl(project, "lineage", prefix), f"'{prefix}' is the start of {len(both)} run ids", *both)
    one_line_error(gemctl(project, "lineage", "m-"), "logged model ids", before["stage3"]["model_id"])
    # a store that cannot be reached is named
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    one_line_error(gemctl(project, "lineage", "stage3@ci", "--tracking-uri", f"http://127.0.0.1:{port}"),
                   f"http://127.0.0.1:{port}", "cannot be reached")
    missing = f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"
    one_line_error(gemctl(project, "runs", "--tracking-uri", missing), missing)
    assert not (tmp_path / "none").exists()  # nothing created where the store was looked for
    # a --where that does not parse, and sort keys and graph files that make no sense
    one_line_error(gemctl(project, "runs", "--where", "metrics.vsi > and"), "--where", "does not parse")
    one_line_error(gemctl(project, "runs", "--sort", "metrics.a or b"), "--sort")
    one_line_error(gemctl(project, "lineage", "stage3@ci", "--graph", str(tmp_path / "g.gif")), ".png or .svg")
    one_line_error(gemctl(project, "lineage", "diff", "stage3@ci"), "exactly two")


def test_reader_refuses_a_schema_it_does_not_know(built, tmp_path):
    """A store whose tables differ from MLflow 3's (another MLflow version) gets no sqlite reader (lineage then asks
    MLflow) rather than wrong answers."""
    import shutil
    import sqlite3

    from gemctl import lineage_store

    project, before = built
    db = tmp_path / "mlflow.db"
    shutil.copy(project / "mlruns" / "mlflow.db", db)
    exp = lineage_store.experiment_id(str(db), "gemctl")
    reader = lineage_store.open_reader(str(db), exp)
    assert reader is not None and reader.get_run(before["stage3"]["mlflow_run_id"]).data.tags["gemctl.stage"] == "stage3"
    reader.close()
    with sqlite3.connect(db) as con:
        con.execute("ALTER TABLE model_versions RENAME COLUMN source TO source_uri")
    assert lineage_store.open_reader(str(db), exp) is None
