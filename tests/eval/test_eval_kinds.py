"""The tiny model evaluated end to end through the CLI and DVC on every kind of item the recipe's list holds:
multiple choice, numeric, open QA, points and boxes (gem-synth-qa), depth (gem-synth-depth) and closed loop
(gem-synth-closed-loop, on stage 4's checkpoint). Each lands in results.json and predictions.jsonl and as MLflow
metrics on the scored stage's logged model; a second call scores nothing again."""

import json

import pytest

from tests.eval.test_eval_cli import eval_runs
from tests.pipeline.project_copy import gemctl, make_project

pytestmark = pytest.mark.slow

LIST = ("eval=[{benchmark: gem-synth-qa, limit: 40}, {benchmark: gem-synth-depth, limit: 4}, "
        "{benchmark: gem-synth-closed-loop, limit: 2}]")
# gem-synth-qa's question kinds (categories) and the item kind each is graded as
QA_KINDS = {"closer": "choice", "left_right": "choice", "two_view": "choice", "depth_order": "choice",
            "count": "numeric", "plan": "open", "next_step": "open", "point": "point", "box": "box"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("kinds"))
    r = gemctl(project, "run", "--recipe", "ci", "-o", LIST)
    assert r.returncode == 0, r.stdout + r.stderr
    return project, r


def results(project, bench):
    d = project / "runs" / "ci" / "eval" / bench
    rows = [json.loads(x) for x in (d / "predictions.jsonl").read_text().splitlines()]
    return json.loads((d / "results.json").read_text()), rows


def test_each_kind_is_scored_and_recorded(run):
    project, r = run
    table = r.stdout[r.stdout.index("evaluations of recipe ci"):]
    for bench, stage in (("gem-synth-qa", "stage3"), ("gem-synth-depth", "stage3"),
                         ("gem-synth-closed-loop", "stage4")):
        assert bench in table, table
        res, rows = results(project, bench)
        # every item is in the predictions, scored in [0, 1]; the overall is the benchmark's rule over them
        assert len(rows) == res["counts"]["items"] > 0
        assert all(0.0 <= row["score"] <= 1.0 for row in rows)
        summary = json.loads((project / "runs" / "ci" / stage / "summary.json").read_text())
        assert res["settings"]["model_id"] == summary["model_id"]  # the checkpoint of the stage it names
    qa, rows = results(project, "gem-synth-qa")
    assert set(qa["categories"]) == set(QA_KINDS) and qa["counts"]["items"] == 40
    assert qa["overall"] == pytest.approx(sum(row["score"] for row in rows) / 40)
    depth, rows = results(project, "gem-synth-depth")
    assert depth["counts"]["items"] == 4 and all(row["parsed"]["absrel"] >= 0 for row in rows)
    # the three depth metrics over the items, next to the per-item score (the delta1 fraction)
    assert depth["depth"]["scored"] == 4
    for k in ("absrel", "delta1", "rmse"):
        assert depth["depth"][k] == pytest.approx(sum(row["parsed"][k] for row in rows) / 4)
    assert depth["overall"] == pytest.approx(depth["depth"]["delta1"])
    loop, rows = results(project, "gem-synth-closed-loop")
    assert loop["counts"]["items"] == 2 and {row["score"] for row in rows} <= {0.0, 1.0}
    # MLflow: one evaluation run per benchmark, its overall logged on the scored checkpoint's model
    runs = {x.data.tags["gemctl.eval.benchmark"]: x for x in eval_runs(project)}
    assert set(runs) == {"gem-synth-qa", "gem-synth-depth", "gem-synth-closed-loop"}
    for bench, res in (("gem-synth-qa", qa), ("gem-synth-depth", depth), ("gem-synth-closed-loop", loop)):
        assert runs[bench].data.metrics[f"{bench}/{res['metric']}"] == pytest.approx(res["overall"])
        assert runs[bench].data.tags["gemctl.model_id"] == res["settings"]["model_id"]
    assert runs["gem-synth-depth"].data.metrics["gem-synth-depth/absrel"] == pytest.approx(depth["depth"]["absrel"])


def test_a_second_call_scores_nothing_again(run):
    project, _ = run
    before = len(eval_runs(project))
    r = gemctl(project, "eval", "all", "--recipe", "ci", "-o", LIST)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("(up to date)") == 3 and "(ran)" not in r.stdout, r.stdout
    assert len(eval_runs(project)) == before
