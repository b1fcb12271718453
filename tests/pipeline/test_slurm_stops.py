"""`gemctl train --executor slurm` ends after `gemctl cancel` also when SLURM's accounting does not know the job
(issue: it blocked for ever while the job sat in COMPLETING and sacct had no row for it). On the project's test
cluster, with `sacct` on PATH answering about a job id it has never heard of instead of ours."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from gem_stages.trainer import checkpoint_step, checkpoints

from .project_copy import GEMCTL, env, make_project

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

BOUND_S = 600  # only guards against the hang this file is about; the wait ends long before


@pytest.fixture(scope="module")
def project(slurm_cluster, tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("slurm-stops"))


@pytest.fixture
def blind_env(tmp_path) -> dict[str, str]:
    """The environment with a `sacct` first on PATH that asks the real one about job 2000000000 instead."""
    shim = tmp_path / "bin" / "sacct"
    shim.parent.mkdir()
    shim.write_text(f"""#!/bin/bash
args=(); next=""
for a in "$@"; do
  if [ -n "$next" ]; then args+=(2000000000); next=""; elif [ "$a" = -j ]; then args+=(-j); next=1; else args+=("$a"); fi
done
exec {shutil.which("sacct")} "${{args[@]}}"
""")
    shim.chmod(0o755)
    e = env()
    return {**e, "PATH": f"{shim.parent}{os.pathsep}{e['PATH']}"}


def test_train_ends_cancelled_after_cancel_when_accounting_does_not_know_the_job(project, blind_env, tmp_path):
    log = tmp_path / "train.log"
    with log.open("w") as out:
        proc = subprocess.Popen([GEMCTL, "train", "stage1", "--recipe", "ci", "--executor", "slurm", "-o",
                                 "stages.stage1.steps=100000", "-o", "stages.stage1.checkpoint_every=0"],
                                cwd=project, stdout=out, stderr=subprocess.STDOUT, env=blind_env)
    try:
        deadline = time.monotonic() + BOUND_S
        while "[stage1] step " not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        r = subprocess.run([GEMCTL, "cancel", "stage1@ci"], cwd=project, capture_output=True, text=True,
                           env=blind_env)
        assert r.returncode == 0 and "cancelled 1 job(s)" in r.stdout, r.stdout + r.stderr
        code = proc.wait(timeout=BOUND_S)  # blocked for ever before
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert code == 130, out
    assert "Traceback" not in out
    assert [line for line in out.splitlines() if line.startswith("stage1@ci: cancelled")], out
    r = subprocess.run([GEMCTL, "status", "--json"], cwd=project, capture_output=True, text=True, env=blind_env)
    assert [j["state"] for j in json.loads(r.stdout) if j["stage"] == "stage1"] == ["CANCELLED"]
    (work,) = Path(project / "runs" / "ci" / "resume").glob("stage1-*")
    kept = checkpoints(work)
    assert kept and checkpoint_step(kept[-1]) >= 1, out
    assert "stage1@ci" not in yaml.safe_load((project / "dvc.lock").read_text())["stages"]
