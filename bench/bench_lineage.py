"""`gemctl lineage` and `gemctl runs` on a store of 1,000 generated runs, against the equivalent mlflow.search_runs
call measured in the same run (targets: lineage <= 0.5 s and runs <= 1 s beyond CLI start).

The store is what 125 pipelines record: per recipe a data run, stages 1-4 (each with the resolved recipe's params,
its dataset input, the parent tags, a logged model), and evaluations of stage 3 and stage 4: 1,000 runs.

Two measures each, median of repeats:
  in process   the command's work once the store is open (gemctl.lineage) vs mlflow.search_runs on the same store
  CLI          wall time of the command minus `gemctl --help` (CLI start), vs a `python -c` doing the search_runs
               call minus `python -c pass` (which includes importing mlflow and opening the store)
Lineage is measured with both of its readers of the sqlite store: its own (the default) and MLflow's client
(GEMCTL_LINEAGE_READER=mlflow, what a server store gets).

    python bench/bench_lineage.py [--pipelines 125]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GEMCTL = str(Path(sys.executable).parent / "gemctl")

from tests.pipeline.project_copy import make_project  # noqa: E402


def generate(project: Path, pipelines: int) -> dict:
    """Record `pipelines` x 8 runs as the stages would; returns ids to query."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Dataset, DatasetInput, InputTag, LoggedModelOutput, Metric, Param

    from gemctl.project import Project
    from gemctl.recipe import resolve
    from gemctl.schema import flatten
    from gemctl.tracking import setup

    p = Project(project)
    exp = setup(p)
    client = MlflowClient()
    base = resolve(p.recipes_dir, "ci")
    ids: dict = {"stage1": [], "stage4": [], "recipes": []}
    now = int(time.time() * 1000)
    for i in range(pipelines):
        recipe = f"r{i:03d}"
        params = [Param(k, str(v)[:6000]) for k, v in flatten({**base.to_dict(), "name": recipe}).items()]
        digest = f"{i:032x}.dir"
        parent, parent_model = None, None
        common = {"gemctl.recipe": recipe, "gemctl.recipe_hash": f"{i:012x}", "gemctl.git_commit": "0" * 40,
                  "gemctl.git_dirty": "false", "gemctl.version.mlflow": mlflow.__version__}

        def run(name, tags, metrics=(), dataset=None, params=params, common=common, recipe=recipe):
            r = client.create_run(exp, run_name=name, start_time=now + len(ids["recipes"]),
                                  tags={**common, **tags})
            rid = r.info.run_id
            client.log_batch(rid, params=params, metrics=[Metric(k, v, now, 1) for k, v in metrics])
            if dataset:
                source = Dataset(f"gem-synth:{recipe}", dataset, "local", '{"uri": "/d"}')
                client.log_inputs(rid, [DatasetInput(source, [InputTag("mlflow.data.context", "training")])])
            client.set_terminated(rid, "FINISHED")
            return rid

        run(f"data@{recipe}", {"gemctl.stage": "data", "gemctl.data_digest": f"{i:032x}"})
        models = {}
        for stage in ("stage1", "stage2", "stage3", "stage4"):
            tags = {"gemctl.stage": stage}
            if parent:
                tags |= {"gemctl.parent_run_id": parent, "gemctl.parent_model_id": parent_model,
                         "gemctl.parent_checkpoint": f"/p/runs/{recipe}/{stage}/model"}
            rid = run(f"{stage}@{recipe}", tags, [("loss", 1.0 / (i + 1)), ("lr", 1e-3)], digest)
            m = client.create_logged_model(exp, name=f"{recipe}-{stage}", source_run_id=rid, tags={
                "gemctl.checkpoint": f"/p/runs/{recipe}/{stage}/model", "gemctl.stage": stage, **common})
            client.log_outputs(rid, [LoggedModelOutput(m.model_id, 3)])
            parent, parent_model, models[stage] = rid, m.model_id, m.model_id
            if stage in ids:
                ids[stage].append(rid)
        for stage in ("stage3", "stage4"):
            run(f"eval gem-synth-qa@{recipe}", {"gemctl.eval.benchmark": "gem-synth-qa",
                                                 "gemctl.eval.metric": "accuracy", "gemctl.model_id": models[stage],
                                                 "gemctl.checkpoint": f"/p/runs/{recipe}/{stage}/model"},
                [("gem-synth-qa/accuracy", (i % 10) / 10), ("gem-synth-qa/items", 60.0)],
                params=[Param("limit", "60"), Param("benchmark", "gem-synth-qa")])
        ids["recipes"].append(recipe)
    return ids


def median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def wall(cmd: list[str], cwd: Path, repeat: int, reader: str = "sqlite") -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("GEMCTL_TRACKING_URI", "GEMCTL_PROJECT")}
    env[lineage_reader_env()] = reader
    return median_time(lambda: subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True), repeat)


def lineage_reader_env() -> str:
    from gemctl.lineage import READER_ENV

    return READER_ENV


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipelines", type=int, default=125, help="8 runs each (default: 1,000 runs)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", type=Path, help="generate the store in this folder once, and reuse it after")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = args.keep or Path(tmp) / "project"
        if (project / "ids.json").is_file():
            ids = json.loads((project / "ids.json").read_text())
        else:
            make_project(project)
            t0 = time.perf_counter()
            ids = generate(project, args.pipelines)
            (project / "ids.json").write_text(json.dumps(ids))
            print(f"generated {args.pipelines * 8} runs in {time.perf_counter() - t0:.0f} s")
        os.chdir(project)

        import mlflow

        from gemctl import lineage, run_query
        from gemctl.project import Project

        store = lineage.Store(Project(project))
        exp = [store.experiment]
        mid = len(ids["recipes"]) // 2
        target_up, target_down = ids["stage4"][mid], ids["stage1"][mid]
        query = run_query.parse("metrics.`gem-synth-qa/accuracy` >= 0.5 and params.stages.stage3.lr = 1e-3")

        def with_reader(reader: str, fn):
            def timed():
                os.environ[lineage.READER_ENV] = reader
                try:
                    fn()
                finally:
                    os.environ.pop(lineage.READER_ENV)
            return timed

        def up():  # a fresh Store each time: nothing cached between repeats
            store = lineage.Store(Project(project))
            lineage.upstream(store, lineage.resolve_target(store, target_up[:10]))

        def down():
            store = lineage.Store(Project(project))
            lineage.downstream(store, lineage.resolve_target(store, target_down[:10]))

        def diff():
            store = lineage.Store(Project(project))
            a, b = (lineage.with_scores(store, lineage.upstream(store, lineage.resolve_target(store, t[:10])))
                    for t in (target_up, ids["stage4"][mid + 1]))
            lineage.diff(a, b)

        def runs():  # what `gemctl runs --where` reads: the table's settings and the params the query names
            wanted = {f"stages.{s}.{k}" for s in ("stage1", "stage2", "stage3", "stage4")
                      for k in ("lr", "steps", "batch_size")} | {"seed", "limit", "stages.stage3.lr"}
            [r for r in lineage.rows(lineage.Store(Project(project)), wanted) if run_query.matches(query, r)]

        recipe = ids["recipes"][mid]
        one_recipe = lambda: mlflow.search_runs(exp, filter_string=f"tags.`gemctl.recipe` = '{recipe}'")  # noqa: E731
        cases = [
            ("lineage (upstream)", with_reader("sqlite", up), 0.5, one_recipe),
            ("  via mlflow client", with_reader("mlflow", up), 0.5, one_recipe),
            ("lineage --down", with_reader("sqlite", down), 0.5, one_recipe),
            ("  via mlflow client", with_reader("mlflow", down), 0.5, one_recipe),
            ("lineage diff", with_reader("sqlite", diff), 0.5, one_recipe),
            ("  via mlflow client", with_reader("mlflow", diff), 0.5, one_recipe),
            ("runs --where", runs, 1.0, lambda: mlflow.search_runs(exp)),
        ]
        print(f"\nin process, store open (median of {args.repeat}):")
        for name, fn, target, baseline in cases:
            ours = median_time(fn, args.repeat)
            base = median_time(baseline, args.repeat)
            print(f"  {name:20s} {ours * 1000:8.1f} ms   mlflow.search_runs {base * 1000:8.1f} ms   "
                  f"ratio {ours / base:5.2f}x   target <= {target * 1000:.0f} ms: {'ok' if ours <= target else 'MISSED'}")

        start = wall([GEMCTL, "--help"], project, args.repeat)
        pass_ = wall([sys.executable, "-c", "pass"], project, args.repeat)
        uri = store.uri
        search = wall([sys.executable, "-c", f"import mlflow; mlflow.set_tracking_uri({uri!r}); "
                       f"mlflow.search_runs(experiment_names=['gemctl'])"], project, args.repeat)
        print(f"\nCLI wall time (median of {args.repeat}); `gemctl --help` {start * 1000:.0f} ms, "
              f"`python -c pass` {pass_ * 1000:.0f} ms, python -c mlflow.search_runs over all: "
              f"{(search - pass_) * 1000:.0f} ms beyond python start")
        lineage_up = [GEMCTL, "lineage", target_up[:10], "--json"]
        lineage_down = [GEMCTL, "lineage", target_down[:10], "--down", "--json"]
        lineage_diff = [GEMCTL, "lineage", "diff", target_up[:10], ids["stage4"][mid + 1][:10], "--json"]
        for name, cmd, target, reader in (
                ("lineage", lineage_up, 0.5, "sqlite"),
                ("  via mlflow client", lineage_up, 0.5, "mlflow"),
                ("lineage --down", lineage_down, 0.5, "sqlite"),
                ("  via mlflow client", lineage_down, 0.5, "mlflow"),
                ("lineage diff", lineage_diff, 0.5, "sqlite"),
                ("  via mlflow client", lineage_diff, 0.5, "mlflow"),
                ("runs --where", [GEMCTL, "runs", "--json", "--where", str(query)], 1.0, "sqlite")):
            t = wall(cmd, project, args.repeat, reader) - start
            print(f"  {name:20s} {t * 1000:8.0f} ms beyond CLI start   ratio to search_runs "
                  f"{t / (search - pass_):5.2f}x   target <= {target * 1000:.0f} ms: {'ok' if t <= target else 'MISSED'}")


if __name__ == "__main__":
    main()
