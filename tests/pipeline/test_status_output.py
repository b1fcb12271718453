"""`gemctl status` at 80 columns (issue 7, points 10 and 11): job ids whole (they are copied into `logs` and
`cancel`), user text printed as it is."""

import subprocess
import time

from gemctl.launch import registry

from .project_copy import GEMCTL, env


def record(job_id: str, **kw) -> registry.JobRecord:
    base = dict(job_id=job_id, kind="local", name="stage3@ci", state="COMPLETED", submitted=time.time(),
                stdout="/nonexistent/out", stderr="/nonexistent/err", job_dir="/nonexistent", node="localhost",
                start=time.time() - 75, end=time.time(), exit_code=0)
    return registry.JobRecord(**{**base, **kw})


def status(project, columns: int = 80) -> str:
    r = subprocess.run([GEMCTL, "status"], cwd=project, capture_output=True, text=True,
                       env={**env(), "COLUMNS": str(columns)})
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_status_at_80_columns_never_cuts_a_job_id(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "recipes").mkdir()
    ids = ["local-5234567", "local-5234568", "1234567_12", "1234567_13"]
    for i, job_id in enumerate(ids):
        registry.save(tmp_path, record(job_id, submitted=time.time() + i, kind="local" if "local" in job_id else "x",
                                       node="a-rather-long-node-name-042",
                                       tags={"stage": "stage3", "point": "my-long-recipe/c3630f7ec863",
                                             "sweep": "sw-1fd8b6cb", "run": "stage3@my-long-recipe/c3630f7ec863"}))
    text = status(tmp_path)
    assert max(len(x) for x in text.splitlines()) <= 80
    words = text.replace("│", " ").replace("┃", " ").split()
    for job_id in ids:
        assert job_id in words, text
    assert "1m15s" in text or "75s" in text


def test_status_prints_user_text_as_it_is(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "recipes").mkdir()
    registry.save(tmp_path, record("local-77", tags={"stage": "stage3", "point": "r[k]"}))
    assert "r[k]" in status(tmp_path, columns=120)
