"""A throwaway copy of the project (git + DVC) to run the real pipeline in (tests and bench/ use it)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GEMCTL = str(Path(sys.executable).parent / "gemctl")

# Small enough to run all four stages in about a minute on 2 CPU cores.
CI_RECIPE = """\
description: tiny, fewer steps and samples (tests)
extends: tiny
data: {num_scenes: 12, num_episodes: 3, episode_max_steps: 30}
stages:
  stage1: {steps: 3, batch_size: 2}
  stage2: {steps: 3, batch_size: 2}
  stage3: {steps: 3, batch_size: 2}
  stage4: {steps: 3, batch_size: 2}
eval: []  # tiny's evaluations run where a test asks for them (-o eval=...), not after every pipeline test
"""


def make_project(dest: Path) -> Path:
    for name in ("gemctl", "models", "stages", "recipes"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, dest / name)
    (dest / "params.yaml").write_text("recipes: []\n")
    (dest / "recipes" / "ci.yaml").write_text(CI_RECIPE)
    (dest / ".dvc").mkdir()
    shutil.copy(ROOT / ".dvc" / "config", dest / ".dvc" / "config")
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=dest, check=True)
    return dest


def env() -> dict[str, str]:
    """The test's environment, less what would point gemctl at another project or store."""
    return {k: v for k, v in os.environ.items() if k not in ("GEMCTL_TRACKING_URI", "GEMCTL_PROJECT")}


def gemctl(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([GEMCTL, *args], cwd=project, capture_output=True, text=True, env=env())
