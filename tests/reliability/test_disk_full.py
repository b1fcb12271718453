"""A full disk while a stage writes: the previous checkpoint stays intact, one line says what to do, nothing is
recorded, and freeing space then running again resumes.

The small filesystem is a tmpfs mounted in a private mount namespace (`unshare -m`) of one shell that runs every
command of a scenario, so nothing outside the test ever sees it; it is grown in place (`mount -o remount,size=`) to
stand for the user freeing space.
"""

import json
import shlex
import shutil
import subprocess
import textwrap

import pytest
import yaml

from tests.pipeline.project_copy import GEMCTL, env, make_project


def in_namespace(script: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "-m", "bash", "-c", script], cwd=cwd, capture_output=True, text=True,
                          env=env())


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to mount the small test filesystems")
    project = make_project(tmp_path_factory.mktemp("diskfull"))
    # a first, short stage 1 on the real disk: its dataset and its model's size are what the scenario builds on
    r = subprocess.run([GEMCTL, "train", "stage1", "--recipe", "ci", "-o", "stages.stage1.steps=1"], cwd=project,
                       capture_output=True, text=True, env=env())
    assert r.returncode == 0, r.stderr
    return project


def _size(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_a_checkpoint_that_does_not_fit_keeps_the_previous_one_and_records_nothing(project):
    model_bytes = _size(project / "runs" / "ci" / "stage1" / "model")
    lock_before = (project / "dvc.lock").read_text()
    resume = project / "runs" / "ci" / "resume"
    resume.mkdir(exist_ok=True)
    # room for one resume checkpoint (the model plus a small optimiser state), not for a second beside it
    size_kb = int(model_bytes * 1.6) // 1024
    train = shlex.join([GEMCTL, "train", "stage1", "--recipe", "ci", "-o", "stages.stage1.steps=3",
                        "-o", "stages.stage1.checkpoint_every=1"])
    script = textwrap.dedent(f"""
        set -u
        mount -t tmpfs -o size={size_kb}k tmpfs {shlex.quote(str(resume))}
        {train} > full.out 2> full.err; echo $? > full.rc
        (cat runs/ci/stage1/summary.json 2>/dev/null || echo '{{"step": null}}') > full.summary; cp dvc.lock full.lock
        find {shlex.quote(str(resume))} -maxdepth 2 | sort > full.ls
        {GEMCTL.rsplit('/', 1)[0]}/python -c "
import sys, glob
from gem_stages.trainer import checkpoints, checkpoint_step, refuse_unsafe_pickles
from pathlib import Path
work = [Path(p) for p in glob.glob('{resume}/stage1-*')]
found = checkpoints(work[0])
refuse_unsafe_pickles(found[-1])
print(len(found), checkpoint_step(found[-1]), found[-1].name)
" > full.ckpt 2>&1
        mount -o remount,size=262144k {shlex.quote(str(resume))}   # the user frees space
        {train} > again.out 2> again.err; echo $? > again.rc
    """)
    r = in_namespace(script, project)
    assert r.returncode == 0, r.stderr
    out = {name: (project / name).read_text() for name in ("full.err", "full.rc", "full.ls", "full.ckpt",
                                                             "again.err", "again.rc")}
    # the full disk: one line naming it and the fix, exit 1, no traceback
    assert out["full.rc"].strip() == "1", out["full.err"]
    lines = [line for line in out["full.err"].splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "no space left on the filesystem of" in lines[-1], out["full.err"]
    assert "free some and run again" in lines[-1] and "Traceback" not in out["full.err"]
    # the complete checkpoint of step 1 is intact and loads; no half-written .tmp is left taking space
    assert out["full.ckpt"].split() == ["1", "1", "ckpt-00000001"], out["full.ckpt"]
    assert ".tmp" not in out["full.ls"]
    # nothing recorded: dvc.lock as before the run (stage 1 of steps=1), no summary of a 3-step stage 1
    # (DVC removed stage 1's old output before running it; the DVC cache keeps it: `dvc checkout` restores it)
    assert json.loads((project / "full.summary").read_text())["step"] in (None, 1)
    assert (project / "full.lock").read_text() == lock_before
    # space freed: the same command resumes from step 1 and finishes; now it is recorded
    assert out["again.rc"].strip() == "0", out["again.err"]
    summary = json.loads((project / "runs" / "ci" / "stage1" / "summary.json").read_text())
    assert summary["step"] == 3 and summary["resumed_from"] == 1
    assert (project / "dvc.lock").read_text() != lock_before


def test_a_dataset_that_does_not_fit_leaves_nothing_and_records_nothing(project):
    lock_before = (project / "dvc.lock").read_text()
    data_bytes = _size(project / "runs" / "ci" / "data")
    target = project / "runs" / "other"
    target.mkdir()
    # a second recipe whose dataset is written on a filesystem with room for half of it
    (project / "recipes" / "other.yaml").write_text("extends: ci\nseed: 5\n")
    cmd = shlex.join([GEMCTL, "train", "data", "--recipe", "other"])
    script = textwrap.dedent(f"""
        mount -t tmpfs -o size={max(data_bytes // 2048, 64)}k tmpfs {shlex.quote(str(target))}
        {cmd} > data.out 2> data.err; echo $? > data.rc
        find {shlex.quote(str(target))} | sort > data.ls
    """)
    r = in_namespace(script, project)
    assert r.returncode == 0, r.stderr
    err = (project / "data.err").read_text()
    assert (project / "data.rc").read_text().strip() == "1", err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert "no space left on the filesystem of" in last and "Traceback" not in err, err
    listing = (project / "data.ls").read_text().split()
    assert not any("staging" in p or p.endswith("/data") for p in listing), listing  # no half dataset left
    # no data stage recorded (the recipe's label_depth, which labels nothing and ran before it, may be)
    def recorded(text: str) -> dict:
        return {k: v for k, v in yaml.safe_load(text)["stages"].items() if not k.startswith("label_depth@")}

    assert recorded((project / "dvc.lock").read_text()) == recorded(lock_before)
