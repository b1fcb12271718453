"""Jobs run the code of submit time: editing the working tree afterwards changes nothing for them."""

import functools
import signal

from gemctl.launch import Resources, snapshot, submit
from tests.launch import jobfns
from tests.launch.conftest import TEST_PREFIX, log_has, wait_for
from tests.launch.test_preemption import send_signal


def test_snapshot_is_content_addressed_and_reused(tmp_path):
    src = tmp_path / "src" / "probe_pkg"
    src.mkdir(parents=True)
    (src / "__init__.py").write_text("VALUE = 1\n")
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "x.pyc").write_bytes(b"junk")
    a = snapshot.take(tmp_path / "jobs", {"probe_pkg": src})
    assert snapshot.take(tmp_path / "jobs", {"probe_pkg": src}) == a
    assert not (a / "probe_pkg" / "__pycache__").exists()
    (src / "__init__.py").write_text("VALUE = 2\n")
    b = snapshot.take(tmp_path / "jobs", {"probe_pkg": src})
    assert b != a and (a / "probe_pkg" / "__init__.py").read_text() == "VALUE = 1\n"
    assert set(snapshot.project_packages()) == {"gemctl", "gem_models", "gem_stages"}


def test_editing_the_working_tree_after_submit_does_not_change_the_job(job_kind, tmp_path):
    kind = job_kind
    src = tmp_path / "src" / "probe_pkg"
    src.mkdir(parents=True)
    (src / "__init__.py").write_text("VALUE = 1\n")
    go = tmp_path / "go"
    code = {**snapshot.project_packages(), "probe_pkg": src}
    h = submit(functools.partial(jobfns.snapshot_probe, "probe_pkg", str(go)), kind=kind,
               resources=Resources(time_min=5, signal_delay_s=30), job_dir=tmp_path / "jobs",
               name=TEST_PREFIX + "snap", code=code)
    (src / "__init__.py").write_text("VALUE = 2\n")  # the job has not imported it yet: it waits for `go`
    go.touch()
    r = h.wait()
    assert r.ok, r.error
    code_dir = tmp_path / "jobs" / "code"
    assert r.value["value"] == 1
    # the project's own packages come from the snapshot too, not from the editable install or the cwd
    for key in ("pkg_file", "gemctl", "gem_stages"):
        assert r.value[key].startswith(str(code_dir)), (key, r.value[key])


def test_a_requeued_job_runs_the_code_of_submit_time(job_kind, tmp_path):
    """Edit the snapshotted package between submit and requeue: the requeued run, a fresh process that imports
    it again, still runs the submitted code."""
    src = tmp_path / "src" / "probe_pkg"
    src.mkdir(parents=True)
    (src / "__init__.py").write_text("VALUE = 1\n")
    h = submit(functools.partial(jobfns.snapshot_requeue_probe, "probe_pkg"), kind=job_kind,
               resources=Resources(time_min=5, signal_delay_s=30), job_dir=tmp_path / "jobs",
               name=TEST_PREFIX + "snap-requeue", code={**snapshot.project_packages(), "probe_pkg": src})
    wait_for(lambda: log_has(h.stdout, "at step 0"), "the first run to start")
    assert "first run sees VALUE=1" in h.stdout.read_text()
    (src / "__init__.py").write_text("VALUE = 2\n")  # the user edits the tree while the job runs
    send_signal(h.job_id, signal.SIGTERM)  # preempted: checkpoint, requeue, run again
    r = h.wait()
    assert r.ok, r.error
    assert r.requeues == 1 and r.value["restarts"] == 1
    assert r.value["value"] == 1 and r.value["pkg_file"].startswith(str(tmp_path / "jobs" / "code"))


def _modes(folder):
    return {p.relative_to(folder).as_posix(): p.stat().st_mode & 0o777 for p in [folder, *folder.rglob("*")]}


def test_a_snapshot_has_the_users_umask_and_is_never_world_writable(tmp_path):
    import os
    import stat

    src = tmp_path / "pkg"
    (src / "sub").mkdir(parents=True)
    (src / "__init__.py").write_text("")
    (src / "sub" / "run.sh").write_text("#!/bin/sh\n")
    for p in (src, src / "sub", src / "__init__.py"):
        os.chmod(p, 0o777 if p.is_dir() else 0o666)  # a world-writable checkout
    os.chmod(src / "sub" / "run.sh", 0o777)
    old = os.umask(0o000)  # even a user whose umask lets everyone write
    try:
        open_dir = snapshot.take(tmp_path / "a", {"pkg": src})
    finally:
        os.umask(old)
    modes = _modes(open_dir)
    assert not any(m & stat.S_IWOTH for m in modes.values()), modes
    assert modes["pkg/__init__.py"] == 0o664 and modes["pkg/sub/run.sh"] == 0o775 and modes["pkg"] == 0o775
    old = os.umask(0o077)  # a private umask is kept: nothing for group or others
    try:
        private = snapshot.take(tmp_path / "b", {"pkg": src})
    finally:
        os.umask(old)
    modes = _modes(private)
    assert modes["pkg/__init__.py"] == 0o600 and modes["pkg/sub/run.sh"] == 0o700 and modes["."] == 0o700, modes
