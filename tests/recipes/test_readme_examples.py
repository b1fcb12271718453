"""README's examples are the shipped files: a newcomer copying one gets what the project runs."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_readme_sweep_file_is_the_shipped_one():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```yaml\n# recipes/sweeps/lr-depth.yaml\n(.*?)```", readme, re.S)
    assert block, "README shows recipes/sweeps/lr-depth.yaml in a yaml block headed by its path"
    shipped = yaml.safe_load((ROOT / "recipes/sweeps/lr-depth.yaml").read_text())
    assert yaml.safe_load(block.group(1)) == shipped
