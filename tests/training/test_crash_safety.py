"""SIGKILL at seeded random moments, half of them while a checkpoint is being written: after every kill each
checkpoint under its final name loads, and the run resumed through all the kills ends with exactly the weights of
an uninterrupted run."""

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import torch

from gem_stages.trainer import STATE_FILE, checkpoint_step, checkpoints

TARGET = Path(__file__).with_name("crash_target.py")
STEPS, KILLS = 40, 8


def start(work: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(TARGET), str(work), str(STEPS)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def newest_step(work: Path) -> int:
    found = checkpoints(work)
    return int(found[-1].name.split("-")[1]) if found else 0


def kill_when(proc: subprocess.Popen, condition) -> bool:
    """SIGKILL proc as soon as condition() holds; False if the process ended first (polling is bounded by it)."""
    while proc.poll() is None:
        if condition():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
    return False


def assert_checkpoints_load(work: Path) -> None:
    for ckpt in checkpoints(work):
        torch.load(ckpt / "pytorch_model.bin", weights_only=True)
        torch.load(ckpt / "optimizer.bin", weights_only=False)
        trainer_state = torch.load(ckpt / STATE_FILE, weights_only=False)
        assert trainer_state == {"step": int(ckpt.name.split("-")[1])}, ckpt.name
        assert checkpoint_step(ckpt) == trainer_state["step"]


def test_sigkill_at_random_moments_never_breaks_resume(tmp_path):
    ref = tmp_path / "ref"
    done = subprocess.run([sys.executable, str(TARGET), str(ref), str(STEPS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]

    rng = random.Random(6)
    work = tmp_path / "killed"
    kills = {"while writing": 0, "between writes": 0}
    for _ in range(KILLS):
        before = newest_step(work)
        proc = start(work)
        if rng.random() < 0.5:
            # while a checkpoint is being written (its .tmp directory is there), at a random file of it
            mode, polls = "while writing", iter(range(rng.randrange(1, 30), -1, -1))
            condition = lambda p=polls: bool(list(work.glob("ckpt-*.tmp"))) and next(p) == 0  # noqa: E731
        else:
            # after a seeded number of new checkpoints: lands in the next step, or in the rotation of old ones
            mode, target = "between writes", before + rng.randint(1, 3)
            condition = lambda t=target: newest_step(work) >= t  # noqa: E731
        assert kill_when(proc, condition), f"the run ended before the kill: {proc.stderr.read()[-2000:]}"
        # the rename may have won the race against the kill; count only kills that left a half-written checkpoint
        kills[mode if mode == "between writes" or list(work.glob("ckpt-*.tmp")) else "between writes"] += 1
        assert not (work / "final.pt").exists()
        assert_checkpoints_load(work)
        assert newest_step(work) >= before  # no kill loses a complete checkpoint
    print(kills)
    assert min(kills.values()) >= 2, kills

    proc = start(work)
    assert proc.wait() == 0, proc.stderr.read()[-2000:]
    assert not [p.name for p in work.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".trash-")]
    expected, got = torch.load(ref / "final.pt"), torch.load(work / "final.pt")
    assert expected.keys() == got.keys()
    for k in expected:
        assert torch.equal(expected[k], got[k]), k
