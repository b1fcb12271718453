"""A sweep under load on the project's test cluster (tests/cluster/start.sh): N points of stage3 as one SLURM array,
then every point checked end to end (gemctl.sweep.verify: summary, MLflow run and metrics, checkpoint).

    .venv/bin/python bench/bench_sweep_load.py --points 200 --parallel 2 --steps 1

Prints points, completed, failed, requeued/retried (job registry and sacct), wall time and points per minute; exits 1
when any point is incomplete. Its jobs are named gemctl-test-bench-...: the test cluster's own prefix.
tests/reliability/test_sweep_load.py runs the same code at a size the suite affords.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.pipeline.project_copy import gemctl, make_project  # noqa: E402


@dataclass
class LoadFigures:
    points: int  # points in the sweep
    completed: int  # points whose run, metrics and checkpoint verify
    failed: list[str]  # "point <id>: <problems>" of each point that does not
    requeued: int  # points whose job was requeued or restarted (the job registry's requeues, sacct's Restarts)
    jobs: dict[str, int]  # array elements per final state (the job registry)
    wall_s: float  # the `gemctl sweep` command, submit to last result
    sweep_output: str  # what it printed (stdout + stderr), for a failure's message

    def lines(self) -> list[str]:
        return [f"points            {self.points}",
                f"completed         {self.completed}",
                f"failed            {len(self.failed)}",
                f"requeued/retried  {self.requeued}",
                f"job states        {json.dumps(self.jobs, sort_keys=True)}",
                f"wall time         {self.wall_s:.1f} s",
                f"points per minute {60 * self.points / self.wall_s:.2f}",
                *self.failed]


def lr_values(points: int) -> list[str]:
    """`points` distinct learning rates, written so the recipe parser reads each as a float."""
    return [f"{(i + 1) * 1e-6:.7f}" for i in range(points)]


def run_load(project: Path, recipe: str, points: int, parallel: int) -> LoadFigures:
    """Sweep stage3 of `recipe` over `points` learning rates on SLURM (`parallel` at once), then check every point.
    The upstream (data, stage1, stage2) must be built already: the figures are the sweep's own."""
    from gemctl.launch import registry
    from gemctl.project import Project
    from gemctl.sweep import expand, verify

    grid = f"stages.stage3.lr={','.join(lr_values(points))}"
    t0 = time.perf_counter()
    r = gemctl(project, "sweep", "stage3", "--recipe", recipe, "-p", grid, "--executor", "slurm",
               "--parallel", str(parallel))
    wall = time.perf_counter() - t0
    out = r.stdout + r.stderr
    os.environ.pop("GEMCTL_TRACKING_URI", None)  # the throwaway project's own store, as the command used
    sweep = expand(Project(project), "stage3", recipe, {"stages.stage3.lr": [float(v) for v in lr_values(points)]})
    checks = verify(Project(project), sweep)
    jobs = [j for j in registry.list_jobs(project) if j.sweep == sweep.id]
    states: dict[str, int] = {}
    for j in jobs:
        states[j.state] = states.get(j.state, 0) + 1
    restarts = _sacct_restarts({j.job_id.split("_")[0] for j in jobs})
    requeued = sum(1 for j in jobs if j.requeues > 0 or restarts.get(j.job_id, 0) > 0)
    failed = [f"point {c.point.id} ({c.point.label()}): {'; '.join(c.problems)}" for c in checks if not c.ok]
    if r.returncode != 0 and not failed:
        failed.append(f"`gemctl sweep` exited {r.returncode} with every point complete:\n{out[-2000:]}")
    return LoadFigures(points=len(sweep.points), completed=sum(c.ok for c in checks), failed=failed,
                       requeued=requeued, jobs=states, wall_s=wall, sweep_output=out)


def _sacct_restarts(array_ids: set[str]) -> dict[str, int]:
    """Restarts of each array element, from accounting (empty where the cluster keeps none)."""
    if not array_ids:
        return {}
    r = subprocess.run(["sacct", "-X", "-P", "-n", "-o", "JobID,Restarts", "-j", ",".join(sorted(array_ids))],
                       capture_output=True, text=True, check=False)
    rows = (line.split("|") for line in r.stdout.splitlines() if line.count("|") == 1)
    return {jid: int(n) for jid, n in rows if n.isdigit()}


def load_recipe(project: Path, name: str, steps: int) -> None:
    """A recipe for the load: the `ci` recipe with `steps` steps of stage3; `name` is every job's name prefix."""
    (project / "recipes" / f"{name}.yaml").write_text(
        f"description: sweep load\nextends: ci\nstages:\n  stage3: {{steps: {steps}}}\n")


def build_upstream(project: Path, recipe: str) -> None:
    """data, stage1 and stage2, locally: the sweep pins them and submits only its points."""
    r = gemctl(project, "train", "stage2", "--recipe", recipe)
    if r.returncode != 0:
        raise SystemExit(f"building the upstream failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1)
    args = ap.parse_args()
    subprocess.run(["bash", str(ROOT / "tests/cluster/start.sh"), "single"], check=True, stdout=subprocess.DEVNULL)
    # the project's single-node test cluster (tests/conftest.py: cluster_base), never a system one
    os.environ["SLURM_CONF"] = f"{os.environ.get('GEMCTL_SLURM_BASE', '/tmp/gemctl-slurm')}-single/etc/slurm.conf"
    recipe = f"gemctl-test-bench-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="bench-sweep-load-") as tmp:
        project = make_project(Path(tmp) / "p")
        load_recipe(project, recipe, args.steps)
        build_upstream(project, recipe)
        figures = run_load(project, recipe, args.points, args.parallel)
    print(f"sweep load: stage3, {args.steps} step(s) per point, --parallel {args.parallel}, single-node test cluster")
    print("\n".join(figures.lines()))
    sys.exit(1 if figures.failed else 0)


if __name__ == "__main__":
    main()
