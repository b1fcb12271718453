"""Recipe composition, validation, overrides and hashing."""

import subprocess
import sys
from pathlib import Path

import pytest

from gem_stages.errors import InputError
from gemctl.recipe import Recipe, from_params, parse_override, resolve, write_params
from gemctl.schema import ConfigError, flatten, from_dict

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"


def write(d: Path, name: str, text: str) -> None:
    (d / f"{name}.yaml").write_text(text)


def test_shipped_recipes_resolve_with_paper_settings():
    tiny = resolve(RECIPES, "tiny")
    assert tiny.model.backbone.pretrained is None and tiny.model.depth.space == "pixel"
    g2 = resolve(RECIPES, "gem-2b")
    assert g2.model.backbone.pretrained == "Qwen/Qwen3-VL-2B-Instruct"
    assert g2.model.connector.width == 2304 and g2.model.depth.cfg_dropout == 0.1
    assert g2.model.depth.image_long_side == 448 and g2.model.depth.multiple_of == 32
    s3 = g2.stages.stage3
    assert (s3.lr, s3.schedule, s3.warmup_ratio, s3.loss.lm, s3.loss.depth) == (1e-5, "cosine", 0.03, 1.0, 0.1)
    assert s3.epochs == 1.0  # the released script: one epoch
    assert g2.runtime.mixed_precision == "bf16" and g2.runtime.distributed == "deepspeed_zero2"
    assert g2.stages.stage1.trainable == ["connector"]
    assert g2.stages.stage2.trainable == ["connector", "depth_generator"]
    assert g2.stages.stage4.loss.action == 1.0 and g2.stages.stage4.loss.depth == 0.1
    g8 = resolve(RECIPES, "gem-8b")  # extends gem-2b
    assert g8.model.backbone.pretrained == "Qwen/Qwen3-VL-8B-Instruct"
    assert g8.stages.stage3.lr == 1e-5 and g8.model.connector.width == 2304
    assert g8.resources.mem_gb == 960 and g8.resources.nodes == 4


def test_extends_merges_nested_keys_and_replaces_lists(tmp_path):
    write(tmp_path, "base", "seed: 1\nstages:\n  stage1: {lr: 0.5, trainable: [connector, depth_generator]}\n")
    write(tmp_path, "child", "extends: base\nstages:\n  stage1: {trainable: [connector]}\n")
    r = resolve(tmp_path, "child")
    assert r.seed == 1 and r.stages.stage1.lr == 0.5 and r.stages.stage1.trainable == ["connector"]


def test_extends_cycle_and_unknown_parent(tmp_path):
    write(tmp_path, "a", "extends: b\n")
    write(tmp_path, "b", "extends: a\n")
    with pytest.raises(InputError, match="extends itself"):
        resolve(tmp_path, "a")
    write(tmp_path, "c", "extends: nope\n")
    with pytest.raises(InputError, match="extends unknown recipe 'nope'"):
        resolve(tmp_path, "c")


def test_unknown_key_in_file_suggests_closest(tmp_path):
    write(tmp_path, "r", "stages:\n  stage3: {lrr: 1.0e-5}\n")
    with pytest.raises(ConfigError, match=r"unknown key 'stages.stage3.lrr': did you mean 'lr'\?"):
        resolve(tmp_path, "r")


@pytest.mark.parametrize("override, message", [
    ("stages.stage3.lr=abc", "stages.stage3.lr='abc' is not a number"),
    ("stages.stage3.steps=2.5", "stages.stage3.steps=2.5 is not an integer"),
    ("stages.stage3.steps=0", "stages.stage3.steps=0 is out of range: must be >= 1"),
    ("model.depth.space=voxel", "model.depth.space='voxel' is not allowed: choose one of 'latent', 'pixel'"),
    ("runtime.gradient_checkpointing=3", "runtime.gradient_checkpointing=3 is not a boolean"),
    ("stages.stage2.trainable=[connecter]", "unknown module group 'connecter': did you mean 'connector'?"),
    ("stages.stage3.lrr=1", "unknown key 'stages.stage3.lrr' in override 'stages.stage3.lrr=1': did you mean 'stages.stage3.lr'?"),
    ("stages.stage3.lr", "bad override 'stages.stage3.lr': write it as key.path=value"),
    ("a..b=1", "bad override"),
    ("model.backbone.num_heads=3", "model.backbone: hidden_size 64 is not divisible by num_heads 3"),
    ("model.depth.cross_heads=2", "must equal num_heads x head_dim (4x16)"),
    ("data.image_height=48", "data.image_height=48 is not a multiple of 32"),
])
def test_bad_values_name_key_value_and_what_is_allowed(override, message):
    with pytest.raises(InputError) as e:
        resolve(RECIPES, "tiny", [override])
    assert message in str(e.value)


def test_override_values_parse_like_users_type_them():
    assert parse_override("stages.stage3.lr=3e-5") == (["stages", "stage3", "lr"], 3e-5)
    assert parse_override("seed=7") == (["seed"], 7)
    assert parse_override("stages.stage1.trainable=[connector,depth_generator]")[1] == ["connector", "depth_generator"]
    assert parse_override("model.backbone.pretrained=null")[1] is None
    r = resolve(RECIPES, "tiny", ["stages.stage3.lr=3e-5", "resources.extra_sbatch.exclusive="])
    assert r.stages.stage3.lr == 3e-5 and r.resources.extra_sbatch == {"exclusive": ""}


def test_hash_is_stable_and_content_addressed(tmp_path):
    a = resolve(RECIPES, "tiny")
    assert a.content_hash == resolve(RECIPES, "tiny").content_hash
    assert len(a.content_hash) == 12
    b = resolve(RECIPES, "tiny", ["stages.stage3.lr=3e-5"])
    assert b.content_hash != a.content_hash
    # the same settings written in another key order, or with another description, hash the same
    c = from_dict(Recipe, dict(reversed(list(a.to_dict().items()))) | {"description": "other words"})
    assert c.content_hash == a.content_hash


def test_flat_params_cover_every_leaf():
    flat = flatten(resolve(RECIPES, "tiny").to_dict())
    assert flat["stages.stage3.loss.depth"] == 0.1 and flat["model.connector.width"] == 64
    assert "model.backbone" not in flat


@pytest.mark.parametrize("args, message", [
    (["recipe", "show", "tni"], "unknown recipe 'tni'"),
    (["recipe", "validate", "tiny", "-o", "stages.stage3.lrr=1"], "did you mean 'stages.stage3.lr'?"),
    (["train", "stage9", "--recipe", "tiny"], "unknown stage 'stage9'"),
    (["train", "stage1", "--recipe", "tiny", "-e", "cloud"], "unknown executor 'cloud'"),
])
def test_cli_bad_input_is_one_line_exit_2(args, message):
    r = subprocess.run([sys.executable, "-m", "gemctl.cli", *args], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr


def test_partial_stage_section_keeps_that_stages_defaults(tmp_path):
    write(tmp_path, "r", "stages:\n  stage3: {steps: 5}\n  stage4: {lr: 0.5}\n")
    r = resolve(tmp_path, "r")
    assert r.stages.stage3.steps == 5
    assert r.stages.stage3.trainable == ["merger", "deepstack_merger", "language", "connector", "depth_generator"]
    assert (r.stages.stage3.loss.lm, r.stages.stage3.loss.depth) == (1.0, 0.1)
    assert r.stages.stage4.lr == 0.5 and r.stages.stage4.loss.action == 1.0


@pytest.mark.parametrize("text, message", [
    ("seed: '3'\n", "seed='3' is not an integer"),
    ("seed: true\n", "seed=True is not an integer"),
    ("description: 3\n", "description=3 is not a string"),
    ("runtime: {gradient_checkpointing: 1}\n", "runtime.gradient_checkpointing=1 is not a boolean"),
    ("stages: {stage3: {lr: .nan}}\n", "stages.stage3.lr=nan is not a finite number"),
    ("stages: {stage3: {max_grad_norm: .inf}}\n", "stages.stage3.max_grad_norm=inf is not a finite number"),
    ("stages: {stage3: {lr: '1e-5'}}\n", "stages.stage3.lr='1e-5' is not a number"),
    ("runtime: {distributed: fsdp}\n", "runtime.distributed='fsdp' is not allowed: choose one of 'ddp', "
                                       "'deepspeed_zero2'"),
    ("stages: [stage1]\n", "stages must be a mapping of settings, got ['stage1']"),
    ("model: {backbone: null}\n", "model.backbone must be a mapping of settings, got None"),
    ("data: {cameras: front}\n", "data.cameras='front' is not a list"),
    ("data: {files: [{name: a, annotation: x.jsonl}]}\n",
     "unknown key 'data.files[0].annotation': did you mean 'annotations'?"),
    ("resources: {extra_sbatch: {exclusive: 1}}\n", "resources.extra_sbatch.exclusive=1 is not a string"),
    ("resources: {time_min: 1, signal_delay_s: 60}\n", "resources: signal_delay_s=60 must be shorter than time_min=1"),
    ("resources: {nodes: 0}\n", "resources.nodes=0 is out of range: must be >= 1"),
    ("seed: 4294967296\n", "seed=4294967296 is out of range: must be <= 4294967295"),
])
def test_file_values_keep_their_yaml_types(tmp_path, text, message):
    write(tmp_path, "r", text)
    with pytest.raises(ConfigError) as e:
        resolve(tmp_path, "r")
    assert str(e.value) == f"recipe 'r': {message}" or message in str(e.value)
    assert "\n" not in str(e.value) and "pydantic" not in str(e.value)


def test_numbers_users_type_are_numbers(tmp_path):
    write(tmp_path, "r", "stages:\n  stage3: {lr: 3e-5, max_grad_norm: 2, weight_decay: 1E-2}\n")
    s3 = resolve(tmp_path, "r").stages.stage3
    assert (s3.lr, s3.max_grad_norm, s3.weight_decay) == (3e-5, 2.0, 0.01)
    assert isinstance(s3.max_grad_norm, float)
    r = resolve(RECIPES, "tiny", ["runtime.find_unused_parameters=false", "stages.stage3.lr=1", "seed=0x10"])
    assert r.runtime.find_unused_parameters is False and resolve(RECIPES, "tiny").runtime.find_unused_parameters
    assert r.stages.stage3.lr == 1.0 and r.seed == 16


def test_from_params_reads_back_what_write_params_wrote(tmp_path):
    r = resolve(RECIPES, "tiny", ["stages.stage3.lr=3e-5"])
    write_params(tmp_path / "params.json", r)
    back = from_params(tmp_path / "params.json")
    assert back == r and back.content_hash == r.content_hash
    (tmp_path / "bad.json").write_text('{"stages": {"stage3": {"lr": -1}}}')
    with pytest.raises(ConfigError, match=r"bad.json: stages.stage3.lr=-1 is out of range: must be >= 0.0"):
        from_params(tmp_path / "bad.json")
    (tmp_path / "cut.json").write_text('{"stages": {"sta')
    with pytest.raises(InputError, match=r"cut.json is not valid JSON"):
        from_params(tmp_path / "cut.json")
    (tmp_path / "list.json").write_text('[1]')
    with pytest.raises(ConfigError, match=r"list.json: the settings must be a mapping of keys to values, got list"):
        from_params(tmp_path / "list.json")


@pytest.mark.parametrize("override, message", [
    ("x=1", "valid keys: name, description, seed, model, data, runtime, stages, resources"),
    ("stages.stage3.zzzz=1", "valid keys under stages.stage3: trainable, init, steps, epochs, lr, schedule"),
    ("stages.stage9.lr=1", "did you mean 'stages.stage4.lr'?"),
    ("moddel.backbone.hidden_size=3", "did you mean 'model.backbone.hidden_size'?"),
])
def test_unknown_override_key_suggests_a_key_at_its_level(override, message):
    with pytest.raises(InputError) as e:
        resolve(RECIPES, "tiny", [override])
    assert message in str(e.value)


def test_recipe_list_prints_descriptions_as_text(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    write(tmp_path / "recipes", "odd", 'description: "[/x] not markup"\n')
    r = subprocess.run([sys.executable, "-m", "gemctl.cli", "recipe", "list"], cwd=tmp_path, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["odd", "[/x]", "not", "markup"]
