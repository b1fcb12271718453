"""The recipe JSON Schema editors use: committed, current, and describing every key."""

import json
import subprocess
import sys
from pathlib import Path

from gemctl.recipe import schema

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "recipes" / "recipe.schema.json"


def test_committed_schema_is_current():
    # Stale after a settings change: regenerate with `gemctl recipe schema -o recipes/recipe.schema.json`.
    assert json.loads(COMMITTED.read_text()) == schema(), "recipes/recipe.schema.json is stale: regenerate it"


def test_cli_writes_the_schema(tmp_path):
    out = tmp_path / "recipe.schema.json"
    r = subprocess.run([sys.executable, "-m", "gemctl.cli", "recipe", "schema", "-o", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_text() == COMMITTED.read_text()


def test_every_key_is_described_and_unknown_keys_are_refused():
    s = schema()
    objects = [("recipe", s), *s["$defs"].items()]
    # Recipe + 16 sections (model x5, data x3: data, annotation set, episode camera; runtime, stages x4: stages,
    # stage, loss, episodes; resources x2; eval)
    assert len(objects) == 17
    for name, obj in objects:
        assert obj["additionalProperties"] is False, name
        for key, prop in obj["properties"].items():
            assert len(prop.get("description", "")) > 5, f"{name}.{key} has no description"
    assert s["properties"]["extends"]["type"] == "string"
    runtime = s["$defs"]["RuntimeConfig"]["properties"]
    assert runtime["distributed"]["enum"] == ["ddp", "deepspeed_zero2"]
    assert runtime["find_unused_parameters"]["default"] is True
    lr = s["$defs"]["TrainStageConfig"]["properties"]["lr"]
    assert (lr["minimum"], lr["maximum"], lr["type"]) == (0.0, 1.0, "number")
    side = s["$defs"]["DataConfig"]["properties"]["image_height"]
    assert (side["minimum"], side["maximum"], side["multipleOf"]) == (32, 1024, 32)
