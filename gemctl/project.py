"""Where things live in a gemctl project (a git + DVC repo holding recipes/ and dvc.yaml)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gem_stages.errors import InputError


@dataclass(frozen=True)
class Project:
    root: Path

    @property
    def recipes_dir(self) -> Path:
        return self.root / "recipes"

    @property
    def runs_dir(self) -> Path:
        # One folder per recipe name: rendered params, stage outputs (DVC outs) and resume state.
        return self.root / "runs"

    def recipe_dir(self, recipe: str) -> Path:
        return self.runs_dir / recipe

    def params_file(self, recipe: str) -> Path:
        return self.recipe_dir(recipe) / "params.json"

    def stage_dir(self, recipe: str, stage: str) -> Path:
        return self.recipe_dir(recipe) / stage

    def resume_dir(self, recipe: str) -> Path:
        # Not a DVC out: DVC deletes a stage's outs before running it, and resume state must survive that.
        return self.recipe_dir(recipe) / "resume"

    @property
    def jobs_dir(self) -> Path:
        return self.root / ".gemctl" / "jobs"

    @property
    def tracking_uri(self) -> str:
        """MLflow store: $GEMCTL_TRACKING_URI, else the embedded sqlite store in the project."""
        uri = os.environ.get("GEMCTL_TRACKING_URI")
        if uri:
            return uri
        return f"sqlite:///{(self.root / 'mlruns' / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> Path:
        return self.root / "mlruns" / "artifacts"


def find_project(start: Path | None = None) -> Project:
    """The project holding `start` (default: $GEMCTL_PROJECT or the current directory)."""
    env = os.environ.get("GEMCTL_PROJECT")
    here = Path(env) if env and start is None else (start or Path.cwd())
    here = here.resolve()
    for d in (here, *here.parents):
        if (d / "dvc.yaml").is_file() and (d / "recipes").is_dir():
            return Project(d)
    raise InputError(
        f"no gemctl project at or above {here}: run gemctl inside the project (the folder with dvc.yaml and "
        "recipes/) or set GEMCTL_PROJECT")
