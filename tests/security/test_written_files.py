"""What gemctl writes on a shared machine: no secret from the environment, nothing other users may change.

A real `gemctl train` (local executor, the warm worker and a cold job both) runs with secret-looking environment
variables set and a umask that would let everyone write; afterwards every byte under the project (checkpoints, DVC
files, job folders and logs, code snapshots, the MLflow database and artifacts) and the command's own output are
searched for the secrets' values, and every path's mode is checked.
"""

import os
import stat
import subprocess
import uuid

import pytest

from tests.pipeline.project_copy import GEMCTL, env, make_project

SECRET_NAMES = ("HF_TOKEN", "WANDB_API_KEY", "MY_SERVICE_SECRET", "DB_PASSWORD", "AWS_CREDENTIALS_FILE_X",
                "GITHUB_AUTH_HEADER")


@pytest.mark.parametrize("warm", ["1", "0"])
def test_no_secret_reaches_anything_written_and_nothing_is_world_writable(tmp_path, warm):
    project = make_project(tmp_path / "p")
    secrets = {name: f"s3cr3t-{name.lower()}-{uuid.uuid4().hex}" for name in SECRET_NAMES}
    run_env = {**env(), **secrets, "GEMCTL_WARM": warm}
    r = subprocess.run([GEMCTL, "train", "stage1", "--recipe", "ci"], cwd=project, capture_output=True, text=True,
                       env=run_env, preexec_fn=lambda: os.umask(0o000))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (project / "dvc.lock").is_file() and (project / "mlruns").is_dir()  # it did write what we search

    values = [v.encode() for v in secrets.values()]
    searched = 0
    for root, dirs, files in os.walk(project):
        dirs[:] = [d for d in dirs if d != ".git"]
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            data = open(path, "rb").read()
            searched += 1
            leaked = [v for v in values if v in data]
            assert not leaked, f"{path} holds a secret environment value"
    assert searched > 50  # checkpoints, job logs, snapshots, the store: the walk saw them
    for value in secrets.values():
        assert value not in r.stdout + r.stderr

    written = [project / "runs", project / ".gemctl", project / "mlruns", project / "dvc.lock"]
    world_writable = []
    for top in written:
        for path in [top, *(top.rglob("*") if top.is_dir() else [])]:
            if not path.is_symlink() and path.stat().st_mode & stat.S_IWOTH:
                world_writable.append(str(path.relative_to(project)))
    assert not world_writable, world_writable[:10]
