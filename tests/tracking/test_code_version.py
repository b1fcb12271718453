"""What a run records of its code: the commit, whether code differs from it, and a digest of the difference that
tells two dirty trees apart (and equal ones alike); changes outside the code do not count."""

import os
import subprocess

from gemctl.tracking import code_version

GIT = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]


def test_diff_digest_tells_dirty_trees_apart(tmp_path, monkeypatch):
    monkeypatch.delenv("GEMCTL_GIT_COMMIT", raising=False)
    (tmp_path / "gemctl").mkdir()
    (tmp_path / "gemctl" / "a.py").write_text("x = 1\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*GIT, "commit", "-qm", "init"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()

    clean = code_version(tmp_path)
    assert clean == {"gemctl.git_commit": head, "gemctl.git_dirty": "false"}
    (tmp_path / "notes.txt").write_text("not code\n")  # outside the code paths: still clean
    assert code_version(tmp_path) == clean

    (tmp_path / "gemctl" / "a.py").write_text("x = 2\n")
    two = code_version(tmp_path)
    assert two["gemctl.git_dirty"] == "true" and len(two["gemctl.git_diff_digest"]) == 16
    assert code_version(tmp_path) == two  # same tree, same digest
    (tmp_path / "gemctl" / "a.py").write_text("x = 3\n")
    three = code_version(tmp_path)["gemctl.git_diff_digest"]
    assert three != two["gemctl.git_diff_digest"]
    (tmp_path / "gemctl" / "b.py").write_text("y = 1\n")  # a new, untracked code file counts too
    assert code_version(tmp_path)["gemctl.git_diff_digest"] != three

    subprocess.run(["git", "remote", "add", "origin", "https://example.com/lab/gem.git"], cwd=tmp_path, check=True)
    assert code_version(tmp_path)["gemctl.git_remote"] == "https://example.com/lab/gem.git"


def test_a_job_records_what_its_launcher_pinned(tmp_path, monkeypatch):
    from gemctl.tracking import pin_code_version

    # pin_code_version writes os.environ: give it a copy, so that nothing outlives the test
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith("GEMCTL_GIT_")})
    (tmp_path / "gemctl").mkdir()
    (tmp_path / "gemctl" / "a.py").write_text("x = 1\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*GIT, "commit", "-qm", "init"], cwd=tmp_path, check=True)
    (tmp_path / "gemctl" / "a.py").write_text("x = 2\n")
    at_submit = code_version(tmp_path)
    pin_code_version(tmp_path)
    (tmp_path / "gemctl" / "a.py").write_text("x = 3\n")  # the tree moves on after submission
    job = code_version(tmp_path)
    assert {k: job[k] for k in at_submit} == at_submit
