"""Log text is printed as it is (issue 7, point 11): a failed job's tail is not read as rich markup or emoji codes."""

import pytest
from typer.testing import CliRunner

from gemctl import cli, stage_runner


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "recipes").mkdir()
    monkeypatch.setenv("GEMCTL_PROJECT", str(tmp_path))
    monkeypatch.setenv("DVC_STAGE", "stage1@ci")  # as DVC runs it: reads the rendered recipe, renders nothing
    monkeypatch.setenv("COLUMNS", "80")
    return tmp_path


def test_a_failed_jobs_tail_prints_verbatim(project, monkeypatch):
    tail = "    x = r[k]\nKeyError: '[bold]depth[/bold]' :smile: [/]\nfull log: /jobs/1_0_log.out"
    monkeypatch.setattr(stage_runner, "launch_stage", lambda *a, **k: (1, f"job 1 ended FAILED (exit 1); {tail}"))
    r = CliRunner().invoke(cli.app, ["stage", "run", "stage1", "--recipe", "ci"])
    assert r.exit_code == 1
    assert tail in r.output
