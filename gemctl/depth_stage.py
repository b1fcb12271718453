"""The label_depth DVC stage: depth labels for the recipe's annotation sets that name a `depth_model`.

    runs/<recipe>/init/label_depth.json   per such set: its image root, the model folder, and a digest of each
                                          (every file's path, size and mtime, as DVC checks a file unchanged);
                                          written when gemctl renders the recipe, the stage's dependency
    runs/<recipe>/depth/<set index>/      the set's labels (stages/label_depth.py's layout): its depth_root
    runs/<recipe>/depth/labels.json       what each set was labelled from, and the counts

So a changed model or image tree re-labels, an unchanged one is skipped by DVC, and a recipe that labels nothing
runs the stage once to write an empty labels.json (it starts no job). The output is persistent (dvc.yaml): labels
of the same model are kept, so an image added labels that image only and a stopped run resumes; a set whose model
changed is removed and labelled again, as is the label of an image changed since it was labelled. Labelling runs
the code of `gemctl data label-depth`: `data.depth_shards` jobs per set, one array on the pipeline's executor (a
SLURM array under `--executor slurm`, each job with `stage_resources.label_depth`), finished shards not started
again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from gem_stages.errors import InputError
from gem_stages.files import atomic_write_text

from .launch.resources import Resources
from .outcome import CANCELLED_EXIT
from .project import Project

STAGE = "label_depth"
LABELS = "labels.json"


def out_dir(project: Project, recipe_name: str) -> Path:
    return project.recipe_dir(recipe_name) / "depth"


def plan_file(project: Project, recipe_name: str) -> Path:
    return project.recipe_dir(recipe_name) / "init" / f"{STAGE}.json"


def labelled_sets(data) -> list[tuple[int, object]]:
    """(index, AnnotationSet) of the sets whose depth the stage labels."""
    return [(i, s) for i, s in enumerate(data.files) if data.source == "files" and s.depth_model]


def image_root(aset, root: Path) -> Path:
    """The set's image root as the data stage resolves it: data_path, else the annotation file's folder."""
    path = aset.data_path or str(Path(aset.annotations).parent)
    return (root / os.path.expanduser(path)).resolve()  # an absolute path replaces the root


def stat_digest(folder: Path, files: list[str]) -> str:
    h = hashlib.sha256()
    for rel in files:
        st = os.stat(os.path.join(folder, rel))  # not Path: a million of them in a second or two
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def write_plan(project: Project, recipe) -> None:
    """runs/<recipe>/init/label_depth.json (see the module); written only when its content changes."""
    from gem_stages.label_depth import list_images

    sets = []
    for i, s in enumerate(recipe.data.files) if recipe.data.source == "files" else ():
        if not s.depth_model:
            continue
        images = image_root(s, project.root)
        model = (project.root / os.path.expanduser(s.depth_model)).resolve()
        model_files = sorted(str(p.relative_to(model)) for p in model.rglob("*") if p.is_file())
        sets.append({"index": i, "name": s.name, "images": str(images), "model": str(model),
                     "images_digest": stat_digest(images, list_images(images)),
                     "model_digest": stat_digest(model, model_files)})
    entry = {"sets": sets}
    if sets:
        entry.update(on_error=recipe.data.on_error, max_skipped=recipe.data.max_skipped)
    path = plan_file(project, recipe.name)
    text = json.dumps(entry, indent=2, sort_keys=True) + "\n"
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)


def with_labelled_depth(project: Project, recipe_name: str, data):
    """The data section with each labelled set's depth_root at its labels (what the data stage reads)."""
    files = list(data.files)
    for i, s in labelled_sets(data):
        labels = out_dir(project, recipe_name) / str(i)
        if not (labels / "depth").is_dir():  # `gemctl stage run data` by hand, before the pipeline labelled it
            raise InputError(f"data.files[{i}] ({s.name}) is labelled by the label_depth stage, which has not run: "
                             f"run `gemctl train data --recipe {recipe_name}`")
        files[i] = replace(s, depth_root=str(labels.resolve()), depth_model="")
    return replace(data, files=files)


def labelling_counts(project: Project, recipe_name: str) -> dict[str, int]:
    """What the label_depth stage did, for the data stage's counts (and its MLflow metrics data/depth_labels/...);
    {} when it labelled nothing."""
    path = out_dir(project, recipe_name) / LABELS
    sets = json.loads(path.read_text())["sets"] if path.is_file() else []
    if not sets:
        return {}
    return {f"depth_labels/{k}": sum(len(s[k]) if k == "unreadable" else s[k] for s in sets)
            for k in ("written", "skipped", "unreadable")}


def shard_resources(recipe) -> Resources:
    """What each labelling job asks for: `stage_resources.label_depth` over `resources`, as one process on one node
    with at most one GPU (a depth estimator runs on one device; more shards, not more GPUs per job, go faster);
    array_parallelism at most the shards of a set (one array per set)."""
    res = recipe.resources_for(STAGE)
    return replace(res, nodes=1, tasks_per_node=None, gpus_per_node=min(res.gpus_per_node, 1),
                   array_parallelism=min(res.array_parallelism, recipe.data.depth_shards))


def label_job(images: str, out: str, model: str, shard: int, shards: int, on_error: str):
    """One job of the array: one shard of stages/label_depth.py (the launcher stops it between two files on
    Ctrl-C, preemption or its time limit; requeued, it resumes). max_skipped is checked over the whole set, by
    run(), not per shard."""
    from gem_stages.label_depth import label_shard

    from .launch import should_stop
    from .stage_runner import job_outcome

    return job_outcome(partial(label_shard, Path(images), Path(out), Path(model), shard, shards, "auto",
                               should_stop=should_stop, on_error=on_error, max_skipped=1.0))


def run(project: Project, recipe_name: str, on_update=None) -> tuple[int, str]:
    """The stage program: label each planned set into runs/<recipe>/depth/<index>, data.depth_shards jobs per set
    (one array on $GEMCTL_EXECUTOR). Returns the exit code and what to print."""
    from gem_stages.label_depth import check_unreadable, drop_stale, finished, list_images, prune

    from .launch import kind_from_env, launch_array, wait_all
    from .recipe import from_params

    plan = json.loads(plan_file(project, recipe_name).read_text())
    recipe = from_params(project.params_file(recipe_name))
    shards, kind, resources = recipe.data.depth_shards, kind_from_env(), shard_resources(recipe)
    out = out_dir(project, recipe_name)
    out.mkdir(parents=True, exist_ok=True)
    before = json.loads((out / LABELS).read_text()) if (out / LABELS).is_file() else {}
    done = {str(s["index"]): s for s in before.get("sets", [])}
    wanted = {str(s["index"]) for s in plan["sets"]}
    for old in out.iterdir():  # sets no longer labelled (or renumbered)
        if old.is_dir() and old.name not in wanted:
            shutil.rmtree(old)
    record = []
    for entry in plan["sets"]:
        folder, images = out / str(entry["index"]), Path(entry["images"])
        old = done.get(str(entry["index"]))
        files = list_images(images)
        if old is None or (old["model"], old["model_digest"], old["images"]) != (
                entry["model"], entry["model_digest"], entry["images"]):
            shutil.rmtree(folder, ignore_errors=True)  # labels of another model (or none known): start again
        elif folder.is_dir():
            drop_stale(images, files, folder, shards)  # images changed since: labelled again
        # recorded before labelling: a stopped run resumes with the labels it wrote
        done[str(entry["index"])] = {**entry, "written": 0, "skipped": 0, "unreadable": []}
        atomic_write_text(out / LABELS, json.dumps({"sets": list(done.values())}, indent=2) + "\n")
        results = {k: r for k in range(shards) if (r := finished(folder, files, k, shards)) is not None}
        todo = [k for k in range(shards) if k not in results]
        handles = launch_array(
            [partial(label_job, str(images), str(folder), entry["model"], k, shards, plan["on_error"]) for k in todo],
            kind=kind, resources=resources,
            job_dir=project.jobs_dir / recipe_name / STAGE, name=f"{STAGE}@{recipe_name}", project=project.root,
            tags=[{"stage": STAGE, "point": f"{recipe_name}/{entry['index']}/shard-{k}-of-{shards}",
                   "run": f"{STAGE}@{recipe_name}"} for k in todo])
        try:
            ended = wait_all(handles, on_update)
        except KeyboardInterrupt:
            return CANCELLED_EXIT, "interrupted; the labels written are kept: running it again resumes"
        for k, result in zip(todo, ended, strict=True):
            if result.ok and result.value.status in ("input_error", "no_space"):
                return (2 if result.value.status == "input_error" else 1), result.value.message
            if result.state == "CANCELLED" or (result.ok and result.value.status == "preempted"):
                return CANCELLED_EXIT, (f"cancelled (job {result.job_id}); the labels written are kept: running it "
                                        "again resumes")
            if not result.ok:
                return result.exit_code or 1, (f"job {result.job_id} (shard {k} of {shards}) ended {result.state}; "
                                               f"last lines of its log:\n{result.log_tail(20) or result.error or ''}")
            results[k] = result.value.summary
        unreadable = sorted(u for r in results.values() for u in r["unreadable"])
        try:
            check_unreadable(images, unreadable, len(files), plan["max_skipped"])
        except InputError as e:
            return 2, str(e)
        removed = prune(files, folder)
        done[str(entry["index"])] = {**entry, "written": sum(r["written"] for r in results.values()),
                                     "skipped": sum(r["skipped"] for r in results.values()),
                                     "unreadable": unreadable, "removed": removed}
        record.append(done[str(entry["index"])])
    atomic_write_text(out / LABELS, json.dumps({"sets": record}, indent=2) + "\n")
    return 0, ""


def stage_label_depth(
        recipe: Annotated[str, typer.Option("--recipe", "-r", help="Recipe name (rendered by `gemctl train`).")],
) -> None:
    """Label the depth of a recipe's sets that name a depth_model (the command dvc.yaml's label_depth runs)."""
    from rich.console import Console
    from rich.text import Text

    from . import outcome
    from .pipeline import note_executed
    from .project import find_project

    project = find_project()
    if os.environ.get("DVC_STAGE") == f"{STAGE}@{recipe}":
        note_executed(STAGE)
    if not plan_file(project, recipe).is_file():
        raise InputError(f"runs/{recipe}/init/{STAGE}.json does not exist: run `gemctl train data --recipe "
                         f"{recipe}` (it renders the recipe and labels what it names)")
    from .cli import _show_job

    code, message = run(project, recipe, on_update=partial(_show_job, STAGE))
    if code:
        outcome.write_error(project.recipe_dir(recipe), STAGE, message, code)
        label = () if code == CANCELLED_EXIT else (("error:", "red"), " ")
        Console(stderr=True, soft_wrap=True).print(Text.assemble(*label, f"{STAGE}@{recipe}: {message}"),
                                                   highlight=False, emoji=False)
        raise typer.Exit(code)
