"""What a sweep prints (issue 7, point 12): a table that fits 80 columns without cutting a value, with unique,
readable headers."""

import io
from pathlib import Path

from rich.console import Console

from gemctl.outcome import write_summary
from gemctl.project import Project
from gemctl.summary import print_sweep
from gemctl.sweep import expand, point_dir

ROOT = Path(__file__).resolve().parents[2]


def table_at_80(tmp_path, grid, seeds=1):
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    project = Project(tmp_path)
    sweep = expand(project, "stage3", "tiny", grid, seeds)
    for i, p in enumerate(sweep.points):
        write_summary(point_dir(project, sweep, p) / "out", {
            "status": "completed", "step": 1000 + i,
            "losses": {"loss": 12.345678 + i, "lm": 10.5 + i, "depth": 0.123456 * i}})
    out = io.StringIO()
    print_sweep(Console(file=out, width=80, force_terminal=False), project, sweep)
    return sweep, out.getvalue()


def header(text: str) -> list[str]:
    line = next(x for x in text.splitlines() if "point" in x and "status" in x)
    return line.replace("┃", " ").replace("│", " ").split()  # headers hold no spaces


def test_sweep_table_fits_80_columns_with_every_value_whole(tmp_path):
    sweep, text = table_at_80(tmp_path, {"stages.stage3.lr": [1e-5, 3e-5], "stages.stage3.loss.depth": [0.0, 0.1]},
                              seeds=3)
    assert max(len(x) for x in text.splitlines()) <= 80
    assert "…" not in text
    for p in sweep.points:
        row = next(x for x in text.splitlines() if p.id in x)  # ids are whole: `gemctl logs` takes them
        assert str(p.overrides["stages.stage3.lr"]) in row and str(p.overrides["seed"]) in row
    assert text.count("completed") == 12


def test_sweep_table_headers_are_unique_and_name_what_they_hold(tmp_path):
    _, text = table_at_80(tmp_path, {"stages.stage3.lr": [1e-5, 3e-5], "stages.stage3.loss.depth": [0.0, 0.1]})
    cols = header(text)
    assert len(cols) == len(set(cols)), cols
    assert {"lr", "loss.depth", "depth", "loss", "lm"} <= set(cols), cols  # the weight and the loss, apart
