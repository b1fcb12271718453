"""Start-up cost per stage: `gemctl run --recipe tiny` in a throwaway project copy, per stage wall time vs the
trainer's own time, and the same steps run by the trainer in one process as the baseline.

Targets (issue 6): each training stage's wall time minus its training time <= 3 s, and the whole
`gemctl run --recipe tiny` <= 45 s on this machine. By default the recipe runs twice in the same copy of the
code, cold (every local job starts a fresh Python: GEMCTL_WARM=0) and warm (jobs fork from a warm worker), so
before and after are measured under the same load; the in-process baseline comes last.

    python bench/bench_overhead.py                 # tiny, cold and warm
    python bench/bench_overhead.py --modes warm    # one pass
    python bench/bench_overhead.py --recipe ci     # the tests' small recipe, to try the bench itself

Stage wall time is measured around each `gemctl stage run` process (the command DVC runs) by a wrapper placed
first on PATH; what is left of the total is DVC's own work (hashing, lock file, starting the stage commands).
"""

import argparse
import datetime
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.pipeline.project_copy import GEMCTL, make_project  # noqa: E402

STAGE_TARGET_S = 3.0  # stage wall time minus training time
RUN_TARGET_S = 45.0  # the whole `gemctl run --recipe tiny`
STAGES = ("data", "stage1", "stage2", "stage3", "stage4")
_SUBMITIT_LOG = re.compile(r"submitit INFO \((\S+ \S+)\) - (Starting with|Job completed)")

# Records start and end (epoch seconds) of every `gemctl stage run STAGE ...`, then exits with its status.
WRAPPER = """#!/bin/bash
t0=$(date +%s.%N)
"{real}" "$@"
rc=$?
[ "$1 $2" = "stage run" ] && echo "$3 $t0 $(date +%s.%N) $rc" >> "{log}"
exit $rc
"""


def import_path(project: Path, dest: Path) -> Path:
    """A folder whose gemctl/gem_models/gem_stages are the project copy's: every process runs the copy's code."""
    dest.mkdir()
    for name, folder in (("gemctl", "gemctl"), ("gem_models", "models"), ("gem_stages", "stages")):
        (dest / name).symlink_to(project / folder)
    return dest


def run_recipe(project: Path, recipe: str, env: dict[str, str], tag: str) -> dict:
    """`gemctl run` from scratch (outputs, lock, store and jobs removed); per stage wall and training seconds."""
    for p in ("runs", "mlruns", ".gemctl", ".dvc/cache", ".dvc/tmp"):
        shutil.rmtree(project / p, ignore_errors=True)
    (project / "dvc.lock").unlink(missing_ok=True)
    log = project.parent / f"stages-{tag}.log"
    log.unlink(missing_ok=True)
    bin_dir = project.parent / f"bin-{tag}"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "gemctl"
    wrapper.write_text(WRAPPER.format(real=GEMCTL, log=log))
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    # the venv's bin after the wrapper: gemctl puts it first on PATH for DVC's stage commands when it is missing
    env = {**env, "PATH": f"{bin_dir}:{Path(GEMCTL).parent}:{env['PATH']}"}
    out = project.parent / f"output-{tag}.txt"
    with out.open("w") as f:  # a file, not a pipe: the time is gemctl's, not that of the last job's teardown
        t0 = time.time()
        rc = subprocess.run([str(wrapper), "run", "--recipe", recipe], cwd=project, env=env, stdout=f,
                            stderr=subprocess.STDOUT).returncode
        total = time.time() - t0
    if rc != 0:
        sys.exit(f"gemctl run ({tag}) failed:\n{out.read_text()}")
    stages = {}
    for line in log.read_text().splitlines():
        stage, start, end, _rc = line.split()
        summary = json.loads((project / "runs" / recipe / stage / "summary.json").read_text())
        job_start, job_end = job_times(project / ".gemctl" / "jobs" / recipe / stage)
        stages[stage] = {"wall": float(end) - float(start), "train": float(summary.get("seconds", 0.0)),
                         "to_job": job_start - float(start), "in_job": job_end - job_start,
                         "after_job": float(end) - job_end}
    return {"total": total, "stages": stages}


def job_times(job_dir: Path) -> tuple[float, float]:
    """When the job's function started and ended (submitit's own log lines, local time, ms)."""
    times = {}
    for path in job_dir.glob("*_0_log.*"):
        for when, what in _SUBMITIT_LOG.findall(path.read_text()):
            times[what] = datetime.datetime.strptime(when, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return times["Starting with"], times["Job completed"]


def in_process_baseline(project: Path, recipe_name: str) -> dict[str, float]:
    """The trainer's seconds for the same stages and steps, run one after the other in this process."""
    from gem_stages.train import train_stage
    from gemctl.recipe import resolve
    from gemctl.stage_runner import quiet_libraries

    quiet_libraries()  # as in a stage job
    recipe = resolve(project / "recipes", recipe_name)
    data_dir = project / "runs" / recipe_name / "data"
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        init = None
        for stage in STAGES[1:]:
            summary = train_stage(stage, model_cfg=recipe.model, stage_cfg=getattr(recipe.stages, stage),
                                  runtime=recipe.runtime, seed=recipe.seed, data_dir=data_dir, init_dir=init,
                                  out_dir=Path(tmp) / stage, work_dir=Path(tmp) / f"{stage}-work",
                                  progress=_NoProgress())
            init = Path(tmp) / stage / "model"
            out[stage] = summary["seconds"]
    return out


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, *args) -> None:
        pass


def report(tag: str, run: dict, baseline: dict[str, float]) -> bool:
    ok = True
    print(f"\n{tag}: gemctl run total {run['total']:6.1f} s")
    print(f"  {'stage':8} {'wall s':>7} {'train s':>8} {'overhead s':>11} {'in-process train s':>19}   "
          f"overhead = to job + in job, not training + after job")
    for stage in STAGES:
        s = run["stages"].get(stage)
        if s is None:
            continue
        over = s["wall"] - s["train"]
        verdict = ""
        if stage != "data":  # the data stage's work is its own (no trainer): reported, not judged
            verdict = "ok" if over <= STAGE_TARGET_S else "MISSED"
            ok &= over <= STAGE_TARGET_S
        base = f"{baseline[stage]:19.2f}" if stage in baseline else " " * 19
        print(f"  {stage:8} {s['wall']:7.2f} {s['train']:8.2f} {over:11.2f} {base}   {verdict:6} = "
              f"{s['to_job']:.2f} + {s['in_job'] - s['train']:.2f} + {s['after_job']:.2f}")
    walls = sum(s["wall"] for s in run["stages"].values())
    trains = sum(s["train"] for s in run["stages"].values())
    print(f"  stage processes {walls:6.1f} s (training {trains:.1f} s); outside them (DVC, gemctl run) "
          f"{run['total'] - walls:.1f} s")
    run_ok = run["total"] <= RUN_TARGET_S
    print(f"  total {run['total']:.1f} s vs in-process training {sum(baseline.values()):.1f} s; "
          f"target <= {RUN_TARGET_S:.0f} s: {'ok' if run_ok else 'MISSED'}")
    return ok and run_ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="tiny")
    parser.add_argument("--modes", default="cold,warm", help="comma-separated: cold (GEMCTL_WARM=0), warm")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp) / "project")
        pypath = import_path(project, Path(tmp) / "pypath")
        sys.path.insert(0, str(pypath))
        env = {k: v for k, v in os.environ.items() if k not in ("GEMCTL_TRACKING_URI", "GEMCTL_PROJECT")}
        env["PYTHONPATH"] = str(pypath)
        runs = {}
        for mode in args.modes.split(","):
            runs[mode] = run_recipe(project, args.recipe, {**env, "GEMCTL_WARM": "0" if mode == "cold" else "1"},
                                    mode)
        baseline = in_process_baseline(project, args.recipe)
    results = [report(mode, run, baseline) for mode, run in runs.items()]
    print(f"\ntargets (last mode, {list(runs)[-1]}): {'ok' if results[-1] else 'MISSED'}")


if __name__ == "__main__":
    main()
