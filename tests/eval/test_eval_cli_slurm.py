"""`gemctl eval --shards K --executor slurm` on the project's single-node SLURM: the shards are one job array, merged
into the same scores as one local job."""

import json

import pytest

from tests.eval.test_eval_cli import LETTERS_PY, write_letters
from tests.pipeline.project_copy import gemctl, make_project

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

BENCH = "gemctl-test-letters"  # SLURM names the job <benchmark>@<recipe>: test jobs carry the test prefix


def test_shards_run_as_one_slurm_array_and_merge(slurm_cluster, tmp_path):
    project = make_project(tmp_path / "project")
    (project / "benchmarks").mkdir()
    (project / "benchmarks" / "letters.py").write_text(LETTERS_PY)
    (project / "benchmarks" / f"{BENCH}.yaml").write_text("class: letters:LetterBench\n")
    data = write_letters(tmp_path / "data")
    args = ["eval", BENCH, "--recipe", "ci", "--path", str(data), "--batch-size", "4"]
    r = gemctl(project, *args)  # trains stages 1-3 and scores in one local job
    assert r.returncode == 0, r.stdout + r.stderr
    out = project / "runs" / "ci" / "eval" / BENCH
    local = json.loads((out / "results.json").read_text())
    local_predictions = (out / "predictions.jsonl").read_text()
    r = gemctl(project, *args, "--shards", "3", "--executor", "slurm")
    assert r.returncode == 0, r.stdout + r.stderr
    sharded = json.loads((out / "results.json").read_text())
    keys = ("overall", "categories", "counts")
    assert {k: sharded[k] for k in keys} == {k: local[k] for k in keys}
    assert sharded["settings"]["shards"] == 3
    assert (out / "predictions.jsonl").read_text() == local_predictions
    status = json.loads(gemctl(project, "status", "--json").stdout)
    shards = [j for j in status if j["stage"] == f"eval-{BENCH}" and j["kind"] == "slurm"]
    assert len(shards) == 3 and {j["state"] for j in shards} == {"COMPLETED"}
    assert len({j["job_id"].split("_")[0] for j in shards}) == 1  # one array
