"""`gemctl eval` end to end on the tiny model, through the CLI, DVC and MLflow, in a throwaway project: results and
predictions on disk, metrics on the scored checkpoint's logged model, a second call a no-op, a new checkpoint
re-scored, shards merging to the same scores, `--ckpt` outside the pipeline, and a missing path refused."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.pipeline.project_copy import gemctl, make_project

# A user's own benchmark class (benchmarks/letters.py), named by benchmarks/letters.yaml: multiple choice over
# images listed in questions.jsonl; the answer's first letter is the model's choice.
LETTERS_PY = '''
import json
from gem_stages.errors import InputError
from gem_stages.eval.benchmark import Benchmark, EvalItem, Graded


class LetterBench(Benchmark):
    name = "letters"

    def items(self):
        rows = []
        for n, line in enumerate((self.root / "questions.jsonl").read_text().splitlines(), 1):
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise InputError(f"{self.root / 'questions.jsonl'} line {n} is not JSON: fix that record") from None
        return [EvalItem(id=r["id"], kind="choice", question=r["q"], answer=r["a"], images=[r["image"]],
                         choices=["red", "green"], category=r["cat"]) for r in rows]

    def prompt(self, item):
        return item.question + " A. red B. green"

    def grade(self, item, text):
        letter = text.strip()[:1].upper()
        if letter not in ("A", "B"):
            return Graded(item.id, None, 0.0, "unparsable")
        return Graded(item.id, letter, float(letter == item.answer))
'''


def mlflow_client(project):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    return mlflow


def eval_runs(project):
    mlflow = mlflow_client(project)
    runs = mlflow.search_runs(experiment_names=["gemctl"], output_format="list")
    return [r for r in runs if "gemctl.eval.benchmark" in r.data.tags]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("project"))
    (project / "benchmarks").mkdir()
    (project / "benchmarks" / "letters.py").write_text(LETTERS_PY)
    (project / "benchmarks" / "letters.yaml").write_text("class: letters:LetterBench\n")
    return project, write_letters(tmp_path_factory.mktemp("letters-data"))


def write_letters(data):
    """Six questions over random images, three per category, in the layout LetterBench reads."""
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with open(data / "questions.jsonl", "w") as f:
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(data / f"{i}.png")
            f.write(json.dumps({"id": f"q{i}", "q": f"Colour of {i}?", "a": "AB"[i % 2], "image": f"{i}.png",
                                "cat": "left" if i < 3 else "right"}) + "\n")
    return data


def _results(project):
    return json.loads((project / "runs" / "ci" / "eval" / "letters" / "results.json").read_text())


def _scores(results):
    return {k: results[k] for k in ("benchmark", "metric", "overall", "categories", "counts")}


@pytest.fixture(scope="module")
def first(project):
    project, data = project
    r = gemctl(project, "eval", "letters", "--recipe", "ci", "--path", str(data), "--batch-size", "4")
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_eval_scores_the_stage3_checkpoint_and_records_it(project, first):
    project, data = project
    assert "letters on stage3@ci (ran)" in first.stdout
    results = _results(project)
    rows = [json.loads(x) for x in (project / "runs/ci/eval/letters/predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"q{i}" for i in range(6)]
    assert results["counts"] == {"items": 6, "per_category": {"left": 3, "right": 3}, "unparsable":
                                 sum(r["note"] == "unparsable" for r in rows), "undecodable": 0}
    assert results["overall"] == pytest.approx(sum(r["score"] for r in rows) / 6)
    summary = json.loads((project / "runs/ci/stage3/summary.json").read_text())
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert "eval@ci__letters" in lock
    stage3_md5 = next(o["md5"] for o in lock["stage3@ci"]["outs"])
    s = results["settings"]
    assert s["checkpoint"] == str((project / "runs/ci/stage3/model").resolve())
    assert s["checkpoint_digest"] == stage3_md5 and s["model_id"] == summary["model_id"]
    assert s["data_path"] == str(data.resolve()) and len(s["data_digest"]) >= 16
    assert (s["limit"], s["shards"], s["batch_size"]) == (None, 1, 4)
    # MLflow: one evaluation run, its metrics on stage 3's logged model, the benchmark as an evaluation input
    (run,) = eval_runs(project)
    assert results["lineage"]["mlflow_run_id"] == run.info.run_id
    assert run.data.tags["gemctl.model_id"] == summary["model_id"]
    assert run.data.metrics["letters/accuracy"] == pytest.approx(results["overall"])
    assert run.data.metrics["letters/left"] == pytest.approx(results["categories"]["left"])
    mlflow = mlflow_client(project)
    model = mlflow.get_logged_model(summary["model_id"])
    on_model = {m.key: m.value for m in model.metrics or []}
    assert on_model["letters/accuracy"] == pytest.approx(results["overall"])
    (ds,) = run.inputs.dataset_inputs
    assert ds.dataset.name == "letters" and ds.dataset.digest == s["data_digest"]
    assert ds.tags[0].value == "evaluation"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert artifacts == {"results.json", "predictions.jsonl"}


def test_a_second_call_is_a_noop(project, first):
    project, data = project
    before, runs = _results(project), len(eval_runs(project))
    r = gemctl(project, "eval", "letters", "--recipe", "ci", "--path", str(data), "--batch-size", "4")
    assert r.returncode == 0, r.stderr
    assert "(up to date)" in r.stdout
    assert _results(project) == before and len(eval_runs(project)) == runs


def test_shards_merge_to_the_same_scores(project, first):
    project, data = project
    whole = _results(project)
    r = gemctl(project, "eval", "letters", "--recipe", "ci", "--path", str(data), "--batch-size", "4",
               "--shards", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    sharded = _results(project)
    assert sharded["settings"]["shards"] == 2
    assert _scores(sharded) == _scores(whole)
    assert not (project / "runs/ci/eval/letters/shards").exists()


def test_a_new_checkpoint_is_rescored(project, first):
    project, data = project
    old = _results(project)
    r = gemctl(project, "eval", "letters", "--recipe", "ci", "-o", "stages.stage3.steps=4", "--path", str(data),
               "--batch-size", "4")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(ran)" in r.stdout
    new = _results(project)
    summary = json.loads((project / "runs/ci/stage3/summary.json").read_text())
    assert summary["step"] == 4 and new["settings"]["model_id"] == summary["model_id"] != old["settings"]["model_id"]
    assert new["settings"]["checkpoint_digest"] != old["settings"]["checkpoint_digest"]
    newest = max(eval_runs(project), key=lambda run: run.info.start_time)
    assert newest.data.tags["gemctl.model_id"] == summary["model_id"]


def test_ckpt_outside_the_pipeline(project, first, tmp_path):
    project, data = project
    ckpt = project / "runs/ci/stage3/model"
    r = gemctl(project, "eval", "letters", "--ckpt", str(ckpt), "--path", str(data), "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stdout + r.stderr
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert results["counts"]["items"] == 6 and (tmp_path / "o" / "predictions.jsonl").is_file()
    summary = json.loads((project / "runs/ci/stage3/summary.json").read_text())
    assert results["lineage"]["model_id"] == summary["model_id"]  # found by its checkpoint path
    assert len(results["settings"]["checkpoint_digest"]) == 16
    # without --out, a pipeline checkpoint (a DVC output) is left untouched: its stages stay up to date
    r = gemctl(project, "eval", "letters", "--ckpt", str(ckpt), "--path", str(data), "--limit", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (project / ".gemctl/eval/ci/stage3/model/letters/results.json").is_file()
    assert not (ckpt / "eval").exists()


def test_a_missing_benchmark_path_is_one_line_and_records_nothing(project, first):
    project, _ = project
    params, runs = (project / "params.yaml").read_text(), len(eval_runs(project))
    r = gemctl(project, "eval", "letters", "--recipe", "ci", "--path", str(project / "nowhere"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"error: benchmark letters: data path {project / 'nowhere'} does not exist: download the benchmark there "
        "or give its path"]
    assert (project / "params.yaml").read_text() == params and len(eval_runs(project)) == runs
    r = gemctl(project, "eval", "nope", "--recipe", "ci")
    assert r.returncode == 2 and "unknown benchmark 'nope'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_eval_all_and_run_score_the_recipes_eval_list(project, first):
    project, data = project
    listed = f"eval=[{{benchmark: letters, path: '{data}', limit: 2, batch_size: 2}}]"
    r = gemctl(project, "eval", "all", "--recipe", "ci", "-o", listed)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "letters on stage3@ci (ran)" in r.stdout  # the limit is a new setting: scored again
    assert _results(project)["counts"]["items"] == 2
    r = gemctl(project, "run", "--recipe", "ci", "-o", listed)
    assert r.returncode == 0, r.stdout + r.stderr
    table = r.stdout[r.stdout.index("recipe ci"):]
    assert "stage4" in table and "letters on stage3@ci (up to date)" in table  # after the stages' table
    two = f"eval=[{{benchmark: letters, path: '{data}', limit: 2, batch_size: 2}}, {{benchmark: ltrs, path: '{data}'}}]"
    (project / "benchmarks" / "ltrs.yaml").write_text("class: letters:LetterBench\n")
    r = gemctl(project, "eval", "all", "--recipe", "ci", "-o", two)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = r.stdout[r.stdout.index("evaluations of recipe ci"):].splitlines()
    letters = next(x.split() for x in rows if x.split()[:1] == ["letters"])
    ltrs = next(x.split() for x in rows if x.split()[:1] == ["ltrs"])
    assert letters == ["letters", "stage3", "up", "to", "date", "accuracy", f"{_results(project)['overall']:.4f}",
                       "2"]
    assert ltrs[:3] == ["ltrs", "stage3", "ran"] and ltrs[-1] == "6"
    r = gemctl(project, "eval", "all", "--recipe", "ci")
    assert r.returncode == 2 and "recipe 'ci' has no eval list" in r.stderr


def test_a_malformed_benchmark_file_is_one_line_and_records_nothing(project, first, tmp_path):
    project, data = project
    bad = write_letters(tmp_path / "bad")
    with open(bad / "questions.jsonl", "a") as f:
        f.write("{not json\n")
    runs = len(eval_runs(project))
    r = gemctl(project, "eval", "letters", "--recipe", "ci", "--path", str(bad))
    assert r.returncode == 2, r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"error: eval-letters@ci: {bad / 'questions.jsonl'} line 7 is not JSON: fix that record"]
    assert len(eval_runs(project)) == runs
    assert not (project / "runs/ci/eval/letters/results.json").exists()
