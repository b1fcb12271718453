"""`gemctl data`: prepare users' data outside a recipe's pipeline. `label-depth` writes depth labels for an image
tree with a depth estimator, as shard jobs (one array) through gemctl's launcher (stages/label_depth.py)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from gem_stages.errors import InputError

from .launch import Executor

data_app = typer.Typer(help="Prepare data: depth labels for an image tree.", no_args_is_help=True)


def shard_job(images: str, out: str, model: str, shard: int, shards: int, device: str):
    """One array element: label one shard (the launcher requeues it, resuming, when it returns "preempted")."""
    from gem_stages.label_depth import label_shard

    from .launch import should_stop
    from .stage_runner import job_outcome

    return job_outcome(partial(label_shard, Path(images), Path(out), Path(model), shard, shards, device,
                               should_stop=should_stop))


@data_app.command("label-depth")
def label_depth(
    images: Annotated[Path, typer.Option("--images", help="Root of the image tree to label.")],
    out: Annotated[Path, typer.Option("--out", help="Where labels go: OUT/depth/<image stem>.png (a recipe's "
                                                    "data.files[].depth_root).")],
    model: Annotated[Path, typer.Option("--model", help="Local folder of a transformers depth estimator (Depth "
                                                        "Anything, DPT, ...), as save_pretrained writes it.")],
    shards: Annotated[int, typer.Option("--shards", help="Split the images into this many jobs (one "
                                                                "SLURM array).")] = 1,
    executor: Annotated[Executor, typer.Option("--executor", "-e", help="local, slurm or debug.")] = Executor.LOCAL,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when there is one), cpu or cuda.")] = "auto",
    gpus: Annotated[int, typer.Option("--gpus", help="GPUs per shard job (slurm).")] = 0,
    time_min: Annotated[int, typer.Option("--time-min", help="Time limit of a shard job in minutes; a "
                                                                    "shard stopped by it is requeued and resumes.")]
    = 60,
    partition: Annotated[str | None, typer.Option("--partition", help="SLURM partition.")] = None,
    job_name: Annotated[str | None, typer.Option("--job-name", help="Name of the shard jobs (default: "
                                                                    "label-depth@<out folder name>).")] = None,
) -> None:
    """Label every image under --images with depth; a re-run skips finished shards and files."""
    from gem_stages.label_depth import list_images, plan, shard_done

    from .launch import Resources, launch_array, wait_all

    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"--device {device!r}: choose auto, cpu or cuda")
    for flag, value, least in (("--shards", shards, 1), ("--gpus", gpus, 0), ("--time-min", time_min, 1)):
        if value < least:  # one line, like any bad input (typer's own range check prints a usage panel)
            raise InputError(f"{flag} {value}: give {least} or more")
    images, out, model = images.expanduser().resolve(), out.expanduser().resolve(), model.expanduser().resolve()
    files = list_images(images)
    entry = plan(images, out, model, files)
    todo = [k for k in range(shards) if not shard_done(out, files, k, shards)]
    console = Console(soft_wrap=True, highlight=False)
    if not todo:
        console.print(f"label-depth: all {shards} shard(s) done ({len(files)} images in {out}/depth): nothing to do")
        return
    project = _project_root()
    res = Resources(gpus_per_node=gpus, time_min=time_min, partition=partition, array_parallelism=shards,
                    signal_delay_s=min(120, time_min * 60 // 2))
    fns = [partial(shard_job, str(images), str(out), str(model), k, shards, device) for k in todo]
    tags = [{"stage": "label-depth", "point": f"shard-{k}-of-{shards}", "run": f"label-depth@{out.name}"}
            for k in todo]
    console.print(f"label-depth: {len(files)} images, {entry['kind']} depth model; {len(todo)} of {shards} shard(s) "
                  f"to run on {executor.value}")
    handles = launch_array(fns, kind=executor, resources=res, job_dir=out / ".label-depth" / "jobs",
                           name=job_name or f"label-depth@{out.name}", project=project, tags=tags)
    results = wait_all(handles)
    failed = 0
    for k, r in zip(todo, results, strict=True):
        if r.ok and r.value.status == "input_error":
            raise InputError(r.value.message)
        if not r.ok:
            failed += 1
            console.print(f"shard {k}: job {r.job_id} ended {r.state}; last lines of its log:\n{r.log_tail(10)}")
            continue
        v = r.value.summary
        console.print(f"shard {k}: {v['written']} labelled, {v['skipped']} already done")
    if failed:
        console.print(f"{failed} shard(s) failed: run the same command again to finish them (done files are kept)")
        raise typer.Exit(1)
    console.print(f"label-depth: {len(files)} images labelled in {out}/depth")


def _project_root() -> Path | None:
    """The project whose job registry records the shard jobs (`gemctl status`/`logs`/`cancel`), if any."""
    from .project import find_project

    try:
        return find_project().root
    except InputError:
        return None
