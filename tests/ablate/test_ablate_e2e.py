"""`gemctl ablate` end to end on the tiny recipe: 2 variants x 2 seeds trained and scored through DVC, a report
whose numbers follow from each run's own results, and a re-run that submits nothing and prints the same table."""

import json

import pytest
import yaml

from gemctl.ablation_stats import paired_bootstrap
from tests.pipeline.project_copy import gemctl, make_project

ABLATION = """\
description: test ablation
recipe: ci
seeds: 2
overrides: [stages.stage1.steps=2, stages.stage2.steps=2, stages.stage3.steps=2]
eval:
  - {benchmark: gem-synth-depth, limit: 4}  # continuous scores even after 2 steps (QA answers would all be 0)
variants:
  gem: {}
  no-depth: {stages.stage3.loss.depth: 0.0}
"""


def _table(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("ablation two (baseline"))
    end = next(i for i, x in enumerate(lines) if x.startswith("report:"))
    return lines[start:end]


def _jobs(project) -> set[str]:
    root = project / ".gemctl" / "jobs"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def ablated(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("p"))
    (project / "recipes" / "ablations" / "two.yaml").write_text(ABLATION)
    r = gemctl(project, "ablate", "recipes/ablations/two.yaml")
    assert r.returncode == 0, r.stdout + r.stderr
    return project, r


def test_every_variant_and_seed_ran_as_its_own_recipe(ablated):
    project, r = ablated
    summary = next(x for x in r.stdout.splitlines() if x.startswith("ablation two:"))
    # data, stage 1, 2 and 3 of each run (what the evaluation scores), and one evaluation each
    assert summary.endswith("2 variants x 2 seed(s) = 4 runs on ci; trained 16 stage(s), scored 4 evaluation(s)")
    scores = json.loads((project / "runs" / "ablations" / "two" / "scores.json").read_text())
    runs = scores["runs"]
    assert [(x["variant"], x["seed"]) for x in runs] == [("gem", 0), ("gem", 1), ("no-depth", 0), ("no-depth", 1)]
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    for x in runs:
        params = json.loads((project / "runs" / x["recipe"] / "params.json").read_text())
        assert params["seed"] == x["seed"]
        assert params["stages"]["stage3"]["loss"]["depth"] == (0.0 if x["variant"] == "no-depth" else 0.1)
    # the seed changes every stage's result: another init, data order and noise, stage by stage
    a, b = runs[0]["recipe"], runs[1]["recipe"]
    for stage in ("stage1", "stage2", "stage3"):
        assert lock[f"{stage}@{a}"]["outs"][0]["md5"] != lock[f"{stage}@{b}"]["outs"][0]["md5"], stage


def test_the_table_follows_from_each_runs_results(ablated):
    project, _ = ablated
    scores = json.loads((project / "runs" / "ablations" / "two" / "scores.json").read_text())
    by = {}
    for x in scores["runs"]:
        res = json.loads((project / "runs" / x["recipe"] / "eval" / "gem-synth-depth" / "results.json").read_text())
        by.setdefault(x["variant"], {})[x["seed"]] = res["overall"]
    row = next(r for r in scores["rows"] if r["metric"] == "gem-synth-depth" and r["variant"] == "no-depth")
    diffs = [by["no-depth"][s] - by["gem"][s] for s in (0, 1)]
    assert row["diff"] == pytest.approx(sum(diffs) / 2)
    assert row["mean"] == pytest.approx((by["no-depth"][0] + by["no-depth"][1]) / 2)
    d = paired_bootstrap(by["gem"], by["no-depth"])
    assert (row["low"], row["high"]) == (d.low, d.high)
    # two seeds: the resampled means are d0, (d0 + d1) / 2 and d1, so the interval spans the two differences
    assert (d.low, d.high) == pytest.approx((min(diffs), max(diffs)))
    assert len(set(diffs)) == 2  # the seeds gave different results: the check above is not of a constant
    base = next(r for r in scores["rows"] if r["metric"] == "gem-synth-depth" and r["variant"] == "gem")
    assert base["diff"] is None and base["seeds"] == 2
    folder = project / "runs" / "ablations" / "two"
    md = (folder / "report.md").read_text()
    assert f"{row['diff']:+.4f}" in md and "![gem-synth-depth](plots/gem-synth-depth.svg)" in md
    assert "<table>" in (folder / "report.html").read_text()
    assert (folder / "plots" / "gem-synth-depth.svg").read_text().lstrip().startswith("<?xml")


def test_the_report_is_an_mlflow_run_with_artifacts(ablated):
    import mlflow

    project, _ = ablated
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    exps = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(exps, "tags.`gemctl.ablation` = 'two'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    names = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"report.md", "report.html", "scores.json", "plots"} <= names


def test_a_rerun_submits_nothing_and_prints_the_same_table(ablated):
    project, first = ablated
    jobs = _jobs(project)
    report = (project / "runs" / "ablations" / "two" / "report.md").read_text()
    again = gemctl(project, "ablate", "recipes/ablations/two.yaml")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "4 runs on ci; all up to date: nothing submitted" in again.stdout
    assert _jobs(project) == jobs  # no job folder, no log: nothing was launched
    assert _table(again.stdout) == _table(first.stdout)
    assert (project / "runs" / "ablations" / "two" / "report.md").read_text() == report
