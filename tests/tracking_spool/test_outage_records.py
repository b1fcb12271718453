"""Beyond metrics: a store away when a stage logs, registers and cards its checkpoint and ends, when an evaluation
creates its run, or when the disk under the artifacts is full. The work goes on with one warning line; once the store
is back, the run holds exactly what a run without an outage holds, record by record (tags, params, metric histories,
inputs, logged model, registry version, artifacts, model card), and delivering twice duplicates nothing."""

import json
import shlex
import shutil
import sqlite3
import subprocess
import sys
import textwrap

import pytest
from mlflow import MlflowClient

from gemctl import tracking_spool
from tests.pipeline.project_copy import GEMCTL, ROOT, env, gemctl
from tests.tracking_store.server import Server, free_port, start

from .records import card, evaluation, record, stage, warnings_in

pytestmark = pytest.mark.slow


def test_a_checkpoint_logged_while_the_server_is_stopped_is_registered_and_carded_on_sync(project, monkeypatch,
                                                                                           capfd):
    port = free_port()
    servers = [start(project.root, "--port", str(port), "--workers", "1")]
    assert isinstance(servers[0], Server), servers[0].stdout + servers[0].stderr
    url = servers[0].url
    monkeypatch.setenv("GEMCTL_TRACKING_URI", url)
    try:
        ref_id, ref_ckpt = stage(project, "reference")
        capfd.readouterr()
        out_id, out_ckpt = stage(project, "outage", outage=servers[0].stop, down_after=5)
        err = capfd.readouterr().err
        assert len(warnings_in(err)) == 1 and err.startswith("warning: the tracking store is unavailable ("), err
        # the stage finished; its model is not known yet: the summary says so (no id), the spool keeps it
        assert json.loads((out_ckpt.parent / "summary.json").read_text())["model_id"] is None
        spool = tracking_spool.spool_file(project, out_id)
        ops = [json.loads(line)["op"] for line in spool.read_text().splitlines()]
        assert ops == ["store", "metrics", "metrics", "metrics", "model", "end"], ops
        assert not (out_ckpt.parent / "README.md").exists()

        servers.append(start(project.root, "--port", str(port), "--workers", "1"))
        assert isinstance(servers[1], Server), servers[1].stdout + servers[1].stderr
        kept = spool.read_text()
        r = gemctl(project.root, "sync")
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.splitlines() == [f"run {out_id}: delivered 9 metric point(s)"]
        assert not spool.exists()
        ref = record(url, ref_id, paths=(ref_ckpt.resolve(),))
        got = record(url, out_id, paths=(out_ckpt.resolve(),))
        assert got == ref
        assert got["status"] == "FINISHED" and len(got["models"]) == 1 and len(got["models"][0]["registered"]) == 1
        assert got["models"][0]["registered_in_tag"] and got["models"][0]["registered"][0][0]  # source: the model
        assert card(out_ckpt, out_id, (out_ckpt.resolve(),)) == card(ref_ckpt, ref_id, (ref_ckpt.resolve(),))

        # delivered again (a delivery cut short after its writes landed): no second model, version or point
        spool.write_text(kept)
        r = gemctl(project.root, "sync")
        assert r.stdout.splitlines() == [f"run {out_id}: delivered 0 metric point(s)"], r.stdout + r.stderr
        assert record(url, out_id, paths=(out_ckpt.resolve(),)) == ref
        client = MlflowClient(tracking_uri=url)
        assert len(client.search_model_versions("name = 'ci-stage1'")) == 2  # the reference's and this run's
    finally:
        for s in servers:
            if isinstance(s, Server) and s.proc.poll() is None:
                s.stop()


def test_an_evaluation_while_sqlite_is_locked_creates_its_run_on_delivery(project, monkeypatch, capfd):
    monkeypatch.delenv("GEMCTL_TRACKING_URI", raising=False)
    uri = project.tracking_uri
    run_id, ckpt = stage(project, "reference")
    model_id = json.loads((ckpt.parent / "summary.json").read_text())["model_id"]
    ref_id, _ = evaluation(project, ckpt, model_id, "reference")
    capfd.readouterr()

    holder = sqlite3.connect(project.root / "mlruns" / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process's write transaction, held past the budget of the calls
    try:
        out_id, key = evaluation(project, ckpt, model_id, "outage")
    finally:
        holder.execute("ROLLBACK")
    err = capfd.readouterr().err
    assert len(warnings_in(err)) == 1 and "database is locked" in err and "the evaluation goes on" in err, err
    assert out_id is None and key.startswith("eval-")  # its run does not exist yet: the spool has its creation
    spool = tracking_spool.spool_file(project, key)
    ops = [json.loads(line)["op"] for line in spool.read_text().splitlines()]
    assert ops == ["store", "run", "params", "metrics", "artifacts", "artifacts", "artifacts", "end", "card"], ops
    kept = spool.read_text()
    files = sorted(p.relative_to(spool.parent).as_posix() for p in spool.with_suffix(".files").rglob("*")
                   if p.is_file())
    shutil.copytree(spool.with_suffix(".files"), project.root / "kept.files")

    r = gemctl(project.root, "sync")
    assert r.returncode == 0, r.stdout + r.stderr
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("gemctl").experiment_id
    found = client.search_runs([experiment], filter_string=f"tags.`gemctl.record` = '{key}'")
    assert len(found) == 1
    out_id = found[0].info.run_id
    assert r.stdout.splitlines() == [f"run {out_id}: delivered 6 metric point(s)"]
    assert record(uri, out_id) == record(uri, ref_id)
    assert not spool.exists() and not spool.with_suffix(".files").exists()
    # both evaluations' scores are on the checkpoint's logged model
    scores = MlflowClient(tracking_uri=uri).get_logged_model(model_id).metrics
    assert sorted(m.run_id for m in scores if m.key == "cv-bench/accuracy") == sorted([ref_id, out_id])

    # delivered again (cut short after its writes landed; its files kept): the run is found by its record tag,
    # not made twice, and holds the same
    assert len(files) == 3, files
    spool.write_text(kept)
    shutil.copytree(project.root / "kept.files", spool.with_suffix(".files"))
    r = gemctl(project.root, "sync")
    assert r.stdout.splitlines() == [f"run {out_id}: delivered 0 metric point(s)"], r.stdout + r.stderr
    assert len(client.search_runs([experiment], filter_string=f"tags.`gemctl.record` = '{key}'")) == 1
    assert record(uri, out_id) == record(uri, ref_id)


def test_a_full_disk_under_the_artifacts_spools_them_until_space_is_freed(project, monkeypatch):
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to mount the small test filesystem")
    monkeypatch.delenv("GEMCTL_TRACKING_URI", raising=False)
    uri = project.tracking_uri
    ref_run, ckpt = stage(project, "reference")
    model_id = json.loads((ckpt.parent / "summary.json").read_text())["model_id"]
    ref_id, _ = evaluation(project, ckpt, model_id, "reference")
    artifacts = project.root / "mlruns" / "artifacts"
    python = shlex.quote(sys.executable)
    # a tmpfs over the artifact folder, in a private mount namespace, filled; the evaluation runs there; the user
    # then frees space and syncs; what landed is listed before the namespace (and its tmpfs) goes
    script = textwrap.dedent(f"""
        set -u
        mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(artifacts))}
        head -c 65536 /dev/zero > {shlex.quote(str(artifacts))}/fill 2>/dev/null
        PYTHONPATH={shlex.quote(str(ROOT))} {python} -m tests.tracking_spool.records . > eval.out 2> eval.err
        rm {shlex.quote(str(artifacts))}/fill
        {shlex.quote(GEMCTL)} sync > sync.out 2> sync.err; echo $? > sync.rc
        {python} -c "
import json, sys
from mlflow import MlflowClient
c = MlflowClient(tracking_uri='{uri}')
run_id = json.load(open('eval.out'))['run_id']
def walk(p=None):
    out = []
    for f in c.list_artifacts(run_id, p):
        out += walk(f.path) if f.is_dir else [[f.path, f.file_size]]
    return out
print(json.dumps({{'status': c.get_run(run_id).info.status, 'artifacts': sorted(walk())}}))
" > after.json
    """)
    r = subprocess.run(["unshare", "-m", "bash", "-c", script], cwd=project.root, capture_output=True, text=True,
                       env=env())
    assert r.returncode == 0, r.stderr
    read = {name: (project.root / name).read_text() for name in ("eval.out", "eval.err", "sync.out", "sync.rc")}
    lines = warnings_in(read["eval.err"])
    assert len(lines) == 1 and "No space left on device" in lines[0] and "the evaluation goes on" in lines[0], read
    out_id = json.loads(read["eval.out"])["run_id"]
    assert out_id  # the run and its metrics went in; only what needs the artifact disk (and the end after it) waited
    assert read["sync.rc"].strip() == "0", read
    after = json.loads((project.root / "after.json").read_text())
    ref = record(uri, ref_id)
    assert after == {"status": "FINISHED", "artifacts": [list(a) for a in ref["artifacts"]]}
    assert len(ref["artifacts"]) == 3
    got = record(uri, out_id)  # the database (not on the tmpfs) holds everything but the artifacts' bytes
    assert {k: v for k, v in got.items() if k != "artifacts"} == {k: v for k, v in ref.items() if k != "artifacts"}
