"""The model card of a stage checkpoint: README.md in its folder (runs/<recipe>/<stage>/), Hugging Face style.

YAML front matter (library_name, tags, base_model when the backbone is pretrained, datasets), then what the model
is, how it was trained, its data and code versions, its recipe and parent, and the scores evaluations logged on it.
Everything comes from the stage's summary.json and its MLflow records, nothing else, so writing it twice gives the
same bytes: the stage writes it when it ends, each evaluation of the checkpoint rewrites it with the new scores, and
gemctl rewrites it for a stage DVC restored from its run-cache.

DVC: the card is listed in .dvcignore, so DVC neither hashes nor caches it. Inside the stage's output it would be
part of the output's md5: an evaluation rewriting it would make `dvc status` call the stage (and every evaluation
of it) changed, and the next run would train it again. Ignored, it can change as scores arrive while `dvc status`
stays clean; the price is that DVC does not restore it (gemctl writes it again instead).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from gem_stages.files import atomic_write_text

CARD = "README.md"
# what each stage trains, for the card's first lines (stages/config.py's StagesConfig says the same per field)
PURPOSE = {
    "stage1": "connector initialisation: the connector learns to condition the depth generator (depth loss only)",
    "stage2": "depth-generator warm-up: connector and DiT train on the depth loss",
    "stage3": "end-to-end joint training: L = L_LM + w * L_depth",
    "stage4": "GEM-VLA: the action expert trains, L = L_action + w * L_depth",
}


def write(stage_dir: Path, *, run_id: str | None = None, model_id: str | None = None) -> Path | None:
    """Write (or rewrite) the card of the checkpoint in `stage_dir` from its summary.json and the MLflow store
    (already set up: tracking.setup). `run_id`/`model_id`: the stage's, while its summary does not hold them yet.
    Returns the card's path (None: no summary, or no MLflow run to describe)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    summary_file = stage_dir / "summary.json"
    if not summary_file.is_file():
        return None
    summary = json.loads(summary_file.read_text())
    run_id = run_id or summary.get("mlflow_run_id")
    model_id = model_id or summary.get("model_id")
    if not run_id:
        return None
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException:  # the run is in another store than the one set up
        return None
    card = stage_dir / CARD
    atomic_write_text(card, render(summary, run, scores(client, run.info.experiment_id, model_id), model_id))
    return card


def scores(client, experiment_id: str, model_id: str | None) -> list[dict]:
    """The newest evaluation of each benchmark logged on `model_id`: benchmark, metric, score, items, run id."""
    if not model_id:
        return []
    found = client.search_runs([experiment_id], filter_string=f"tags.`gemctl.model_id` = '{model_id}'",
                               order_by=["attributes.start_time DESC"])
    newest: dict[str, dict] = {}
    for r in found:
        bench = r.data.tags.get("gemctl.eval.benchmark")
        if not bench or bench in newest:
            continue
        metric = r.data.tags.get("gemctl.eval.metric") or "score"
        key = f"{_key(bench)}/{_key(metric)}"
        newest[bench] = {"benchmark": bench, "metric": metric, "score": r.data.metrics.get(key),
                         "items": r.data.metrics.get(f"{_key(bench)}/items"), "run_id": r.info.run_id}
    return [newest[b] for b in sorted(newest)]


def _key(text: str) -> str:
    from .tracking import _metric_key

    return _metric_key(text)


def render(summary: dict, run, scores: list[dict], model_id: str | None) -> str:
    tags, params = run.data.tags, run.data.params
    stage = summary.get("stage") or tags.get("gemctl.stage", "")
    recipe = tags.get("gemctl.recipe") or summary.get("recipe", "")
    base = params.get("model.backbone.pretrained")
    datasets = [d.dataset for d in run.inputs.dataset_inputs] if run.inputs else []
    parent_model = tags.get("gemctl.parent_model_id")
    front = {"library_name": "gemctl",
             "tags": ["gem", "vision-language-model", "embodied-ai", "depth-generation", stage,
                      f"recipe:{recipe}"],
             **({"base_model": base} if base and base != "None" else {}),
             "datasets": [d.name for d in datasets] or [f"{tags.get('gemctl.recipe', recipe)} data"]}
    weights = {k.rsplit(".", 1)[1]: v for k, v in sorted(params.items()) if k.startswith(f"stages.{stage}.loss.")}
    losses = summary.get("losses") or {}
    commit = tags.get("gemctl.git_commit", "unknown")
    dirty = tags.get("gemctl.git_dirty") == "true"
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {recipe}-{stage}", "",
        f"A GEM checkpoint (Generative Supervision Helps Embodied Intelligence): a "
        f"{params.get('model.backbone.family', 'Qwen-VL')} vision-language model with a DiT depth generator "
        f"conditioned on its visual tokens. Stage {stage[-1:]} of 4 of recipe `{recipe}`: "
        f"{PURPOSE.get(stage, stage)}. Made by gemctl; `gemctl lineage {run.info.run_id[:12]}` shows where it came "
        "from.", "",
        "## How it was trained", "",
        "| | |", "|---|---|",
        f"| stage | {stage} |",
        f"| steps | {summary.get('step', '?')} |",
        f"| trainable groups | {', '.join(summary.get('trainable') or []) or '?'} |",
        f"| trainable parameters | {summary.get('trainable_parameters', '?'):,} |"
        if isinstance(summary.get("trainable_parameters"), int) else "| trainable parameters | ? |",
        f"| loss weights | {', '.join(f'{k} {v}' for k, v in weights.items()) or '?'} |",
        f"| final losses | {', '.join(f'{k} {v:.4g}' for k, v in sorted(losses.items())) or '?'} |",
        f"| parent checkpoint | {tags.get('gemctl.parent_checkpoint') or 'none: starts from the base weights'}"
        f"{f' (logged model `{parent_model}`)' if parent_model else ''} |", "",
        "## Data", "",
        *([f"- `{d.name}`: digest `{d.digest}` (DVC's md5 of the prepared data)" for d in datasets]
          or ["- not recorded"]), "",
        "## Code and recipe", "",
        f"- code: git commit `{commit}`"
        + (f", with uncommitted changes (diff digest `{tags.get('gemctl.git_diff_digest', '?')}`)" if dirty else ""),
        f"- recipe: `{recipe}`, resolved recipe hash `{tags.get('gemctl.recipe_hash', '?')}` (every setting is a "
        "parameter of the MLflow run)",
        f"- MLflow: run `{run.info.run_id}`" + (f", logged model `{model_id}`" if model_id else ""), "",
        "## Scores so far", "",
    ]
    if scores:
        lines += ["| benchmark | metric | score | items | evaluation run |", "|---|---|---|---|---|"]
        lines += [f"| {s['benchmark']} | {s['metric']} | {_num(s['score'])} | {_num(s['items'], '.0f')} | "
                  f"`{s['run_id']}` |" for s in scores]
    else:
        lines += ["None yet: `gemctl eval BENCHMARK --recipe " f"{recipe}` scores it and updates this card."]
    return "\n".join(lines) + "\n"


def _num(value, fmt: str = ".4f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "?"
