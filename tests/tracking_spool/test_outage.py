"""A tracking store that goes away mid-stage: training goes on, one warning line, and once the store is back
(`gemctl sync`, or the next command that opens the store) the run holds exactly what a run without an outage
holds, record by record."""

import sqlite3

import pytest
from mlflow import MlflowClient

from gemctl import tracking_spool
from gemctl.project import Project
from gemctl.recipe import resolve
from gemctl.tracking import StageRun
from tests.pipeline.project_copy import gemctl
from tests.tracking_store.server import Server, free_port, start

from .records import STEPS, loss_parts, warnings_in

DOWN_AFTER = 3  # the store goes away after this many steps were delivered


def train(project: Project, stage: str, outage=None, back=None) -> str:
    """A stage's logging as its trainer does it (StageRun, delivering after every step); `outage()` after
    DOWN_AFTER steps, `back()` after the run ended. Returns the run id."""
    recipe = resolve(project.recipes_dir, "ci")
    with StageRun(project, recipe, stage, work_dir=project.root / "resume" / stage) as run:
        for step in range(1, STEPS + 1):
            run.log_metrics(loss_parts(step), step)
            run.flush()
            if step == DOWN_AFTER and outage:
                outage()
    if back:
        back()
    return run.run_id


def history(uri: str, run_id: str) -> list[tuple]:
    client = MlflowClient(tracking_uri=uri)
    return sorted((m.key, m.step, m.value) for key in loss_parts(1) for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_a_server_stopped_mid_stage_loses_nothing_after_sync(project, monkeypatch, capfd):
    port = free_port()
    server = start(project.root, "--port", str(port), "--workers", "1")
    assert isinstance(server, Server), server.stdout + server.stderr
    monkeypatch.setenv("GEMCTL_TRACKING_URI", server.url)
    try:
        reference = train(project, "stage1")
        capfd.readouterr()
        servers = [server]
        outage_run = train(project, "stage2", outage=lambda: server.stop())
        err = capfd.readouterr().err
        # one line, no traceback; the stage ended normally
        assert len(warnings_in(err)) == 1, err
        assert err.startswith("warning: the tracking store is unavailable (") and "gemctl sync" in err
        spool = tracking_spool.spool_file(project, outage_run)
        assert spool.is_file()

        servers.append(restarted := start(project.root, "--port", str(port), "--workers", "1"))
        assert isinstance(restarted, Server), restarted.stdout + restarted.stderr
        kept = spool.read_text()
        r = gemctl(project.root, "sync")
        assert r.returncode == 0, r.stdout + r.stderr
        delivered = STEPS - DOWN_AFTER
        assert r.stdout.splitlines() == [f"run {outage_run}: delivered {3 * delivered} metric point(s)"]
        assert not spool.exists()
        assert history(server.url, outage_run) == history(server.url, reference)
        client = MlflowClient(tracking_uri=server.url)
        assert client.get_run(outage_run).info.status == "FINISHED"

        # a delivery that is repeated (say, cut short after its writes landed) duplicates nothing
        spool.write_text(kept)
        r = gemctl(project.root, "sync")
        assert r.stdout.splitlines() == [f"run {outage_run}: delivered 0 metric point(s)"]
        assert history(server.url, outage_run) == history(server.url, reference)
        assert gemctl(project.root, "sync").stdout.strip() == "nothing to sync: no spooled tracking records"
    finally:
        for s in servers:
            if s.proc.poll() is None:
                s.stop()


@pytest.mark.slow
def test_a_locked_sqlite_store_loses_nothing_and_the_next_stage_delivers(project, monkeypatch, capfd):
    monkeypatch.delenv("GEMCTL_TRACKING_URI", raising=False)
    reference = train(project, "stage1")
    capfd.readouterr()
    db = project.root / "mlruns" / "mlflow.db"
    holder = sqlite3.connect(db, isolation_level=None)

    def lock():  # another process's write transaction, held past the budget of the stage's store calls
        holder.execute("BEGIN EXCLUSIVE")

    outage_run = train(project, "stage2", outage=lock, back=lambda: holder.execute("ROLLBACK"))
    err = capfd.readouterr().err
    assert len(warnings_in(err)) == 1, err
    assert "database is locked" in err
    spool = tracking_spool.spool_file(project, outage_run)
    assert spool.is_file()
    uri = project.tracking_uri
    assert MlflowClient(tracking_uri=uri).get_run(outage_run).info.status == "RUNNING"  # its end is spooled too

    # the next command that opens the store delivers it (here: the next stage)
    train(project, "stage3")
    assert not spool.exists()
    assert history(uri, outage_run) == history(uri, reference)
    assert MlflowClient(tracking_uri=uri).get_run(outage_run).info.status == "FINISHED"
