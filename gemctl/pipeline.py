"""The DVC side: render a resolved recipe into the pipeline's params and reproduce stages, skipping what is current.

dvc.yaml declares every stage once, `foreach` recipe name in params.yaml; `render` writes runs/<name>/params.json
(only when its content changes; JSON because DVC re-reads it for every stage and its YAML parser is slow) and adds
the name to that list; `prepare_launch` does that and the other checks and settings `train`, `run` and `sweep` share
before anything runs. `reproduce` then asks DVC for `<stage>@<name>`:
DVC runs what is out of date upstream, and restores from its run-cache a stage it has run before with the same
inputs (switching back to an earlier recipe is a cache hit, not a re-run).
"""

from __future__ import annotations

import fcntl
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gem_stages.config import STAGES
from gem_stages.errors import InputError
from gem_stages.files import atomic_write_text

from . import outcome
from .launch import Resources
from .outcome import CANCELLED_EXIT, StageFailed
from .project import Project
from .recipe import Recipe, from_params, write_params

PIPELINE = ("data", *STAGES)
INDEX_HEADER = ("# Recipes whose pipelines this repo builds, and the benchmarks that score them (dvc.yaml's `foreach`).\n"
                "# gemctl adds a recipe the first time you run it, and a benchmark the first time you evaluate it.\n")
LABEL_DEPTH = "label_depth"  # labels the depth of sets that name a depth_model, before data (depth_stage.py)
EVAL = "eval"  # the evaluation stage: one per recipe x benchmark, eval@<recipe>__<benchmark>


def previous_stage(stage: str) -> str:
    """The stage whose output `stage` starts from (stage1 starts from the data)."""
    return PIPELINE[PIPELINE.index(stage) - 1]


def parent_stage(recipe: Recipe, stage: str) -> str:
    """The stage whose output `stage` starts from: the previous one when its weights do (init: previous), else the
    data alone (a stage starting from an imported model or the base weights needs nothing trained before it)."""
    return previous_stage(stage) if getattr(recipe.stages, stage).init == "previous" else "data"


def input_stages(recipe: Recipe, stage: str) -> list[str]:
    """The outputs training `stage` reads: the data, and its parent stage's when it starts from it."""
    return list(dict.fromkeys(["data", parent_stage(recipe, stage)]))


def upstream(stage: str, recipe: Recipe | None = None) -> list[str]:
    """The stage and everything it depends on, in run order: the whole chain, or with the recipe only what its
    stages start from (stage 3 of a recipe that starts it from an imported model: data, stage3)."""
    if stage not in PIPELINE:
        raise InputError(f"unknown stage '{stage}': choose one of {', '.join(PIPELINE)}")
    if recipe is None:
        return list(PIPELINE[: PIPELINE.index(stage) + 1])
    chain = [stage]
    while chain[0] != "data":
        chain.insert(0, parent_stage(recipe, chain[0]))
    return chain


def starts(recipe: Recipe) -> dict[str, str]:
    """params.yaml's `starts` entry of a recipe: dvc.yaml's dependency of stages 2-4 on what each starts from, the
    previous stage's output, or (not starting from it) the stage's own init file, already its dependency: so that
    DVC does not train stages a stage does not start from."""
    return {s: f"runs/{recipe.name}/{previous_stage(s)}" if parent_stage(recipe, s) != "data"
            else f"runs/{recipe.name}/init/{s}.json" for s in STAGES[1:]}


def render(project: Project, recipe: Recipe) -> Path:
    """Write the resolved recipe where its DVC stages read it; list the recipe in params.yaml's `recipes`."""
    from .depth_stage import write_plan
    from .importer import write_init_files

    write_init_files(project, recipe)  # first: an unknown imported model is refused before anything is written
    write_plan(project, recipe)  # the label_depth stage's dependency (runs/<recipe>/init/label_depth.json)
    path = project.params_file(recipe.name)
    write_params(path, recipe)
    index = project.root / "params.yaml"
    lock = project.root / ".gemctl" / "params.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as held:  # two `gemctl train` at once must not drop each other's recipe name
        fcntl.flock(held, fcntl.LOCK_EX)
        data = (yaml.safe_load(index.read_text()) if index.is_file() else None) or {}
        names = list(dict.fromkeys([*(data.get("recipes") or []), recipe.name]))
        entries = dict(data.get("starts") or {})
        for name in names:  # a project from before `starts`: its other recipes' entries, from their params.json
            if name not in entries and name != recipe.name and project.params_file(name).is_file():
                entries[name] = starts(from_params(project.params_file(name)))
        entries[recipe.name] = starts(recipe)
        wanted = {**data, "recipes": names, "starts": entries, "evals": data.get("evals") or {}}
        if wanted != data:  # dvc.yaml's stages need each key, empty or not
            atomic_write_text(index, INDEX_HEADER + yaml.safe_dump(wanted, sort_keys=False))
    return path


def eval_key(recipe: str, benchmark: str) -> str:
    return f"{recipe}__{benchmark}"


def list_eval(project: Project, recipe: str, benchmark: str, stage: str) -> None:
    """Declare the DVC stage eval@<recipe>__<benchmark> (params.yaml's `evals`), scoring `stage`'s checkpoint."""
    index = project.root / "params.yaml"
    entry = {"recipe": recipe, "benchmark": benchmark, "stage": stage}
    with open(project.root / ".gemctl" / "params.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        data = (yaml.safe_load(index.read_text()) if index.is_file() else None) or {}
        evals = dict(data.get("evals") or {})
        if evals.get(eval_key(recipe, benchmark)) != entry:
            evals[eval_key(recipe, benchmark)] = entry
            data["evals"] = evals
            atomic_write_text(index, INDEX_HEADER + yaml.safe_dump(data, sort_keys=False))


def unlist(project: Project, name: str) -> None:
    """Take a recipe off params.yaml's `recipes` (its first run failed before DVC recorded any of its stages)."""
    index = project.root / "params.yaml"
    with open(project.root / ".gemctl" / "params.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        data = (yaml.safe_load(index.read_text()) if index.is_file() else None) or {}
        names = list(data.get("recipes") or [])
        if name in names:
            data["recipes"] = [n for n in names if n != name]
            data["starts"] = {k: v for k, v in (data.get("starts") or {}).items() if k != name}
            atomic_write_text(index, INDEX_HEADER + yaml.safe_dump(data, sort_keys=False))


@dataclass
class ReproResult:
    ran: list[str] = field(default_factory=list)  # stages whose command ran in this call
    restored: list[str] = field(default_factory=list)  # stages DVC restored from its run-cache (nothing ran)
    skipped: list[str] = field(default_factory=list)  # stages that were already up to date


# A file listing the stages whose command ran during one reproduce (`gemctl stage run` adds its stage to it): what
# DVC returned and is not in it was restored from the run-cache.
EXECUTED_ENV = "GEMCTL_EXECUTED_FILE"


def note_executed(stage: str) -> None:
    """Called by `gemctl stage run` when DVC runs it: this stage trains now (not restored)."""
    path = os.environ.get(EXECUTED_ENV)
    if path:
        with open(path, "a") as f:
            f.write(stage + "\n")


def _stage_on_path() -> None:
    # DVC runs each stage's `gemctl stage run ...` in a shell: make it find this gemctl even when the venv is
    # not activated.
    bindir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if bindir not in path.split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + path


def prepare_launch(project: Project, recipe: Recipe, executor: str, tracking_uri: str | None,
                   stages: list[str], resources: Resources | None = None) -> None:
    """What `gemctl train`, `run` and `sweep` do before DVC or a job runs (the recipe was validated when it was
    built): refuse what cannot run on this machine or cluster (preflight: data, weights, tracking store, SLURM
    resources) before anything is written, point jobs at the tracking store and executor, render the recipe's
    params and pin the code version the jobs record. `stages`: those that may run (their resources are checked);
    `resources`: what will be asked for, when not the stage's own (a sweep's --parallel)."""
    from . import preflight, project_lock
    from .tracking import pin_code_version

    preflight.check(project, recipe, executor, tracking_uri, stages, resources)
    project_lock.hold(project)  # from here on this command writes: another one on the project waits
    if tracking_uri:
        os.environ["GEMCTL_TRACKING_URI"] = tracking_uri
    # where stages run is not a DVC parameter (it does not change what they compute): it travels in the env
    os.environ["GEMCTL_EXECUTOR"] = executor
    render(project, recipe)
    pin_code_version(project.root)
    if executor == "local":  # local jobs fork from a warm worker that imports torch & co. while DVC starts
        from .launch import warm

        warm.start_soon()


def _rendered(project: Project, recipe: str) -> Recipe | None:
    """The recipe as rendered for its DVC stages (None before its first render)."""
    path = project.params_file(recipe)
    return from_params(path) if path.is_file() else None


def reproduce(project: Project, recipe: str, stage: str, force: bool = False) -> ReproResult:
    """Bring `stage@recipe` and its upstream up to date with DVC: which stages ran, which DVC restored from its
    run-cache, which were up to date. Raises StageFailed with the exit code of the stage that failed (and whether
    it printed its reason already); a recipe none of whose stages DVC has recorded is taken off params.yaml."""
    rendered = _rendered(project, recipe)
    wanted = upstream(stage, rendered)
    recipe_dir = project.recipe_dir(recipe)
    for s in [LABEL_DEPTH, *wanted]:
        outcome.clear_error(recipe_dir, s)
    stages, ran_now = _reproduce_noting(project, lambda: _dvc_reproduce(project, recipe, stage, wanted, force))
    done = [s for s in _names(stages, rendered) if s != EVAL]
    result = ReproResult(ran=[s for s in done if s in ran_now], restored=[s for s in done if s not in ran_now],
                         skipped=[s for s in wanted if s not in done])
    _restore_cards(project, recipe, result.restored)
    return result


def reproduce_eval(project: Project, recipe: str, benchmark: str, stage: str) -> tuple[bool, ReproResult]:
    """Bring eval@<recipe>__<benchmark> (and the stages it scores) up to date. Returns whether the evaluation ran
    now (False: its results were current, or restored from the run-cache) and what happened upstream."""
    name = f"{EVAL}-{benchmark}"  # its error file, beside the training stages'
    rendered = _rendered(project, recipe)
    wanted = upstream(stage, rendered)
    recipe_dir = project.recipe_dir(recipe)
    for s in [LABEL_DEPTH, *wanted, name]:
        outcome.clear_error(recipe_dir, s)
    stages, ran_now = _reproduce_noting(project, lambda: _dvc_reproduce(
        project, recipe, stage, [*wanted, name], False, target=f"{EVAL}@{eval_key(recipe, benchmark)}"))
    done = _names(stages, rendered)
    train = [s for s in done if s != EVAL]
    result = ReproResult(ran=[s for s in train if s in ran_now], restored=[s for s in train if s not in ran_now],
                         skipped=[s for s in wanted if s not in train])
    _restore_cards(project, recipe, result.restored)
    return name in ran_now, result


def _names(stages: list, recipe: Recipe | None) -> list[str]:
    """The names of the DVC stages that ran or were restored, less label_depth when the recipe labels nothing (it
    only wrote an empty labels.json: not worth a line of what ran)."""
    from .depth_stage import labelled_sets

    names = [s.addressing.split("@")[0] for s in stages]
    if recipe is None or not labelled_sets(recipe.data):
        names = [n for n in names if n != LABEL_DEPTH]
    return names


def _restore_cards(project: Project, recipe: str, restored: list[str]) -> None:
    """DVC ignores model cards (.dvcignore): a stage it restored from its run-cache has the card of whatever was
    there before, or none. Write the restored checkpoint's own."""
    stages = [s for s in restored if s not in ("data", LABEL_DEPTH)]
    if stages:
        from . import model_card
        from .tracking import setup

        setup(project)
        for stage in stages:
            model_card.write(project.stage_dir(recipe, stage))


def _reproduce_noting(project: Project, reproduce) -> tuple[list, set[str]]:
    """reproduce() (DVC) with a file the stage commands it executes note themselves in (note_executed): DVC's
    result alone cannot tell a stage that ran from one restored from its run-cache."""
    _stage_on_path()
    executed = project.root / ".gemctl" / f"executed-{os.getpid()}"
    executed.parent.mkdir(parents=True, exist_ok=True)
    executed.write_text("")
    os.environ[EXECUTED_ENV] = str(executed)
    try:
        stages = reproduce()
        return stages, set(executed.read_text().split())
    finally:
        os.environ.pop(EXECUTED_ENV, None)
        executed.unlink(missing_ok=True)


def _dvc_reproduce(project: Project, recipe: str, stage: str, wanted: list[str], force: bool,
                   target: str | None = None) -> list:
    from dvc.repo import Repo
    from dvc.stage.exceptions import StageCmdFailedError

    from .launch.interrupts import forwarding_interrupts

    recipe_dir = project.recipe_dir(recipe)
    with Repo(str(project.root)) as repo:
        repo.scm_context.quiet = True  # gemctl's summary says what to commit; skip DVC's per-stage git hints
        try:
            def run() -> list:
                if force:
                    # Re-run just this stage; upstream is still brought up to date first.
                    done = repo.reproduce(f"{wanted[-2] if len(wanted) > 1 else LABEL_DEPTH}@{recipe}")
                    return done + repo.reproduce(f"{stage}@{recipe}", force=True, single_item=True)
                return repo.reproduce(target or f"{stage}@{recipe}")

            # a SIGINT to this process alone (DVC ignores it while a stage command runs) stops the stage's job
            stages = forwarding_interrupts(project.root, run)
        except Exception as e:  # DVC wraps the failing command's exit in ReproductionError
            cause = e
            while cause.__cause__ is not None and not isinstance(cause, StageCmdFailedError):
                cause = cause.__cause__
            failed = [e for e in (outcome.read_error(recipe_dir, s) for s in [LABEL_DEPTH, *wanted]) if e]
            # a stage that wrote its error file printed its one-line reason itself
            code = failed[0].get("exit_code", 1) if failed else 1
            # a first run that recorded nothing (labels, reused when it runs again, aside): not listed
            if not [s for s in recorded_stages(project, recipe) if not s.startswith(f"{LABEL_DEPTH}@")]:
                unlist(project, recipe)
            if failed and code == CANCELLED_EXIT:  # the user stopped it: this process says so, in one line
                which = next((s for s in [LABEL_DEPTH, *wanted] if outcome.read_error(recipe_dir, s)), stage)
                raise StageFailed(recipe, which, failed[0].get("message", "cancelled"), exit_code=code,
                                  cancelled=True) from e
            raise StageFailed(recipe, stage, str(cause), exit_code=code, reported=bool(failed)) from e
    return stages


def recorded_stages(project: Project, recipe: str) -> list[str]:
    """The stages of `recipe` that dvc.lock records."""
    lock = project.root / "dvc.lock"
    recorded = ((yaml.safe_load(lock.read_text()) or {}).get("stages") or {}) if lock.is_file() else {}
    return [name for name in recorded if name.endswith(f"@{recipe}")]
