"""Imported checkpoints: the released GEM-2B converted into gemctl's checkpoint layout, registered where a stage's
`init: imported:NAME` finds it.

    runs/imported/NAME/
      model/           a GemModel checkpoint (GemModel.save): what `init: imported:NAME` loads
      manifest.json    source folder, content digest, tensor count, MLflow run / logged model / registry version

The folder appears whole or not at all (written beside, renamed into place); MLflow gets one run ("import:NAME")
whose logged model is registered as `imported-NAME`. A stage that starts from it depends on it in DVC through
runs/<recipe>/init/<stage>.json, which holds the manifest's digest (see `write_init_files`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path

from gem_stages.errors import InputError
from gem_stages.files import atomic_write_text

from .project import Project

PREFIX = "imported:"
MANIFEST = "manifest.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def imported_dir(project: Project) -> Path:
    return project.runs_dir / "imported"


def registered_name(name: str) -> str:
    return f"imported-{name}"


def folder_digest(folder: Path) -> str:
    """sha256 over every file's relative path and bytes, in path order: the same files give the same digest."""
    h = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(file.relative_to(folder)).encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def import_gem_2b(project: Project, source: Path, name: str | None = None) -> dict:
    """Convert the release folder `source` into runs/imported/NAME and register it. Returns the manifest.
    Bad input (another layout, missing shards, a taken name) raises InputError before anything is written."""
    from gem_models.release_layout import ReleaseLayoutError, load_release

    source = source.expanduser().resolve()
    name = name or source.name
    if not NAME_PATTERN.match(name):
        raise InputError(f"--as {name!r}: a name is letters, digits, '_', '.', '-' (starting with a letter or digit)")
    final = imported_dir(project) / name
    if final.exists():
        raise InputError(f"an imported model named {name!r} exists ({final}): choose another --as, or remove that "
                         "folder first")
    try:
        model, account = load_release(str(source))
    except ReleaseLayoutError as e:
        raise InputError(f"{source}: {e}") from None

    tmp = final.parent / f".{name}.tmp-{int(time.time() * 1000)}"
    try:
        model.save(str(tmp / "model"))
        digest = folder_digest(tmp / "model")
        manifest = {"name": name, "format": "gem-2b", "source": str(source), "digest": digest,
                    "imported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "tensors": len(account["tensors"]), "tied": account["tied"],
                    "parameters": account["parameters"], "model": "model"}
        manifest.update(_register(project, name, final / "model", manifest))
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _register(project: Project, name: str, checkpoint: Path, manifest: dict) -> dict:
    """One MLflow run for the import, its checkpoint as a logged model, registered as `imported-NAME`."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelOutput
    from mlflow.exceptions import MlflowException

    from .tracking import setup

    exp = setup(project)
    tags = {"gemctl.stage": "import", "gemctl.imported": name, "gemctl.format": manifest["format"]}
    with mlflow.start_run(experiment_id=exp, run_name=f"import:{name}", tags=tags) as run:
        mlflow.log_params({"source": manifest["source"], "digest": manifest["digest"],
                           "tensors": manifest["tensors"], "parameters": manifest["parameters"]})
        model = mlflow.create_external_model(name=registered_name(name), source_run_id=run.info.run_id,
                                             tags={"gemctl.checkpoint": str(checkpoint), **tags})
        mlflow.log_outputs(models=[LoggedModelOutput(model.model_id, 0)])
        client = MlflowClient()
        try:
            client.create_registered_model(registered_name(name))
        except MlflowException:  # a model of this name was imported before (its folder since removed)
            pass
        version = client.create_model_version(registered_name(name), source=f"models:/{model.model_id}",
                                              run_id=run.info.run_id, model_id=model.model_id)
    return {"mlflow_run_id": run.info.run_id, "model_id": model.model_id, "tracking_uri": project.tracking_uri,
            "registered_model": registered_name(name), "registered_version": int(version.version)}


def imported_name(init: str) -> str | None:
    """NAME of an `imported:NAME` init (None for previous/base)."""
    return init[len(PREFIX):] if init.startswith(PREFIX) else None


def resolve(project: Project, name: str) -> dict:
    """The manifest of imported model NAME, with "dir" (its checkpoint folder); InputError with the fix when
    there is none."""
    folder = imported_dir(project) / name
    path = folder / MANIFEST
    if not path.is_file():
        known = sorted(p.parent.name for p in imported_dir(project).glob(f"*/{MANIFEST}"))
        raise InputError(f"no imported model named {name!r}: import it with `gemctl import gem-2b PATH --as {name}`"
                         + (f" (imported: {', '.join(known)})" if known else ""))
    manifest = json.loads(path.read_text())
    manifest["dir"] = str(folder / manifest.get("model", "model"))
    return manifest


def init_file(project: Project, recipe: str, stage: str) -> Path:
    return project.recipe_dir(recipe) / "init" / f"{stage}.json"


def write_init_files(project: Project, recipe) -> None:
    """runs/<recipe>/init/<stage>.json for each training stage: what it starts from, and for an imported model its
    manifest's digest. dvc.yaml lists the file as the stage's dependency: re-importing another model under the name
    re-runs the stage; other stages' files are not its dependency. Written only when the content changes."""
    from gem_stages.config import STAGES

    for stage in STAGES:
        init = getattr(recipe.stages, stage).init
        name = imported_name(init)
        entry = {"init": init}
        if name is not None:
            manifest = resolve(project, name)
            entry.update(digest=manifest["digest"], model_id=manifest.get("model_id"))
        path = init_file(project, recipe.name, stage)
        text = json.dumps(entry, indent=2, sort_keys=True) + "\n"
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, text)
