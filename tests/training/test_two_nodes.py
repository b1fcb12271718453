"""A tiny-recipe stage as 2 nodes x 1 task on the two-node test cluster, through the gemctl CLI: one rank on each
node (SLURM's node names, recorded in the stage summary by the ranks themselves), gradients synchronised (the
checkpoint equals one process trained on both ranks' micro-batches), one MLflow run and one checkpoint."""

import dataclasses
import json

import pytest
import torch

from gem_models.gem import GemModel
from gemctl.recipe import resolve
from tests.pipeline.project_copy import gemctl, make_project
from tests.training import ddp_job
from tests.training.test_data_parallel import ATOL, RTOL

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def test_two_node_stage_runs_one_rank_per_node_with_synchronised_gradients(slurm_two_nodes, monkeypatch, tmp_path):
    for k, v in slurm_two_nodes.env.items():
        monkeypatch.setenv(k, v)
    project = make_project(tmp_path / "project")
    r = gemctl(project, "train", "stage1", "--recipe", "ci", "--executor", "slurm", "-o", "resources.nodes=2")
    assert r.returncode == 0, r.stdout + r.stderr

    stage_dir = project / "runs" / "ci" / "stage1"
    # one checkpoint (and the model card written beside it)
    assert sorted(p.name for p in stage_dir.iterdir()) == ["README.md", "model", "summary.json"]
    summary = json.loads((stage_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert sorted(summary["nodes"]) == sorted(slurm_two_nodes.nodes)  # rank 0 on one node, rank 1 on the other

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["gemctl"], filter_string="tags.`gemctl.stage` = 'stage1'",
                              output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"

    # the same stage in this process, over both ranks' micro-batches (grad_accum 2 = 2 ranks x 1), and over rank
    # 0's alone: the checkpoint must match the first and not the second
    recipe = resolve(project / "recipes", "ci")
    cfg = recipe.stages.stage1

    def one_process(name: str, grad_accum: int, shard: tuple[int, int] | None) -> dict:
        return ddp_job.recorded_stage(
            "stage1", model_cfg=recipe.model, stage_cfg=dataclasses.replace(cfg, grad_accum=grad_accum),
            runtime=recipe.runtime, seed=recipe.seed, data_dir=project / "runs" / "ci" / "data", init_dir=None,
            out_dir=tmp_path / name / "out", work_dir=tmp_path / name / "work", shard=shard)["weights"]

    trained = {n: p.detach() for n, p in GemModel.load(str(stage_dir / "model")).named_parameters()}
    union, alone = one_process("union", 2 * cfg.grad_accum, None), one_process("rank0", cfg.grad_accum, (0, 2))
    for name, expected in union.items():
        torch.testing.assert_close(trained[name], expected, atol=ATOL, rtol=RTOL, msg=name)
    assert max(float((trained[n] - alone[n]).abs().max()) for n in alone) > 100 * ATOL
