"""`gemctl import`: bring released checkpoints into the project (see gemctl/importer.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

import_app = typer.Typer(help="Import released checkpoints, so a stage can start from them (init: imported:NAME).",
                         no_args_is_help=True)


@import_app.command("gem-2b")
def import_gem_2b(
    path: Annotated[Path, typer.Argument(help="The released GEM-2B folder (config.json, model*.safetensors, "
                                              "the processor's files), e.g. a download of zzzrw/GEM-2B.")],
    name: Annotated[str | None, typer.Option("--as", help="Name to register it under (default: the folder's "
                                                          "name); recipes start from it with init: imported:NAME.")]
    = None,
) -> None:
    """Convert a GEM-2B release checkpoint into gemctl's layout (runs/imported/NAME) and register it in MLflow."""
    from transformers.utils import logging as hf_logging

    from .importer import import_gem_2b as run_import
    from .project import find_project

    hf_logging.disable_progress_bar()
    project = find_project()
    m = run_import(project, path, name)
    Console().print(
        f"imported {m['name']}: {m['tensors']} tensors, {m['parameters']:,} parameters -> "
        f"runs/imported/{m['name']}/model (registered as {m['registered_model']} v{m['registered_version']}); "
        f"start a stage from it with `init: imported:{m['name']}`", highlight=False, markup=False, soft_wrap=True)
