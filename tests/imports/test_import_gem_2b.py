"""`gemctl import gem-2b`: a tiny checkpoint written in the released layout converts into gemctl's, every tensor
lands where it belongs, nothing is left over, the model computes what the original computes, and the import is
registered (project folder + MLflow). A folder in another layout is refused in one line, registering nothing."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from gem_models.config import tiny_config
from gem_models.gem import GemModel
from gem_models.release_layout import CONNECTOR_LAYERS, to_gemctl_key, to_release_key
from gem_stages.errors import InputError
from gemctl.importer import import_gem_2b, resolve
from gemctl.project import Project

from .release_checkpoint import write_release

GEMCTL = str(Path(sys.executable).parent / "gemctl")
CORPUS = ["How far is the cube?", "About 1.5 meters.", "Which view shows the bowl closer?"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def original():
    # latent space: the release has a DC-AE; seed 7 so that nothing equals a seed-0 model by chance
    return GemModel.build(tiny_config(space="latent"), corpus=CORPUS, seed=7)


def _batch(model: GemModel) -> dict:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    sample = {"images": [image], "depths": [rng.uniform(0.5, 5.0, (64, 64))],
              "conversations": [{"from": "human", "value": "<image>\nHow far is the cube?"},
                                {"from": "gpt", "value": "About 1.5 meters."}]}
    return model.processor([sample, sample])


def _release_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            out.update((k, f.get_tensor(k)) for k in f.keys())
    return out


def test_key_map_is_the_release_attribute_names():
    assert to_gemctl_key("model.language_model.layers.0.mlp.up_proj.weight") == \
        "backbone.model.language_model.layers.0.mlp.up_proj.weight"
    assert to_gemctl_key("lm_head.weight") == "backbone.lm_head.weight"
    assert to_gemctl_key("sana.transformer_blocks.3.attn2.to_k.weight") == \
        "depth_generator.transformer.transformer_blocks.3.attn2.to_k.weight"
    assert to_gemctl_key("vae.encoder.conv_in.bias") == "depth_generator.vae.encoder.conv_in.bias"
    assert [to_gemctl_key(f"diffusion_connector.{i}.weight") for i in ("0", "2", "3")] == \
        ["connector.fc1.weight", "connector.fc2.weight", "connector.norm.weight"]
    for key in ("model.visual.blocks.1.attn.qkv.weight", "diffusion_connector.2.bias", "vae.decoder.conv_out.weight"):
        assert to_release_key(to_gemctl_key(key)) == key
    assert set(CONNECTOR_LAYERS) == {"0", "2", "3"}  # Linear, (GELU has no weights), Linear, RMSNorm


@pytest.mark.parametrize("shard_size", ["200KB", None], ids=["sharded", "single-file"])
def test_round_trip_every_tensor_lands_and_outputs_are_equal(tmp_path, original, shard_size):
    release = tmp_path / "GEM-2B"
    write_release(original, str(release), shard_size=shard_size)
    written = _release_tensors(release)
    assert (release / "model.safetensors.index.json").is_file() == (shard_size is not None)
    assert "lm_head.weight" not in written  # tied in GEM-2B: the release's save drops it
    assert {k.split(".")[0] for k in written} == {"model", "sana", "vae", "diffusion_connector"}

    project = Project(tmp_path / "project")
    manifest = import_gem_2b(project, release, "tiny-release")

    imported = GemModel.load(resolve(project, "tiny-release")["dir"])
    state = imported.state_dict()
    # every release tensor landed, bit for bit, at the gemctl key the map gives
    for key, tensor in written.items():
        assert torch.equal(state[to_gemctl_key(key)], tensor), key
    # nothing is left over: the model's only other tensor is the tied lm_head, which is the embedding
    assert set(state) - {to_gemctl_key(k) for k in written} == {"backbone.lm_head.weight"}
    assert torch.equal(state["backbone.lm_head.weight"], state["backbone.model.language_model.embed_tokens.weight"])
    assert manifest["tensors"] == len(written) and manifest["tied"] == ["backbone.lm_head.weight"]
    assert manifest["parameters"] == sum(p.numel() for p in original.parameters())

    # the same forward on the same batch (processing settings are the recipe's, not weights): equal losses
    # (backbone, connector, DiT, DC-AE encode) and equal depth samples (DC-AE decode)
    batch = _batch(original)
    weights = {"lm": 1.0, "depth": 1.0}
    original.eval(), imported.eval()
    a = original(batch, weights, torch.Generator().manual_seed(3))
    b = imported(batch, weights, torch.Generator().manual_seed(3))
    assert a["lm"].item() > 0 and a["depth"].item() > 0
    assert torch.equal(a["lm"], b["lm"]) and torch.equal(a["depth"], b["depth"])
    da = original.sample_depth(batch, steps=2, generator=torch.Generator().manual_seed(4))
    db = imported.sample_depth(batch, steps=2, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(da, db, strict=True))


def test_import_is_registered_in_the_project_and_mlflow(tmp_path, original):
    import mlflow
    from mlflow import MlflowClient

    release = tmp_path / "rel"
    write_release(original, str(release))
    project = Project(tmp_path / "project")
    manifest = import_gem_2b(project, release)  # default name: the folder's
    folder = project.runs_dir / "imported" / "rel"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model"]
    assert json.loads((folder / "manifest.json").read_text()) == manifest
    assert manifest["source"] == str(release.resolve()) and len(manifest["digest"]) == 64
    assert not list(folder.parent.glob(".*"))  # no temporary folder left

    mlflow.set_tracking_uri(project.tracking_uri)
    client = MlflowClient()
    version = client.get_model_version("imported-rel", str(manifest["registered_version"]))
    assert version.source == f"models:/{manifest['model_id']}" and version.run_id == manifest["mlflow_run_id"]
    model = mlflow.get_logged_model(manifest["model_id"])
    assert model.tags["gemctl.checkpoint"] == str(folder / "model")
    run = client.get_run(manifest["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["digest"] == manifest["digest"]

    with pytest.raises(InputError, match="exists"):  # the name is taken: nothing replaced
        import_gem_2b(project, release, "rel")


def _plain_qwen3_vl(original, folder: Path) -> None:
    original.backbone.save_pretrained(str(folder))
    original.processor.tokenizer.save_pretrained(str(folder))


def _missing_shard(original, folder: Path) -> None:
    write_release(original, str(folder))
    sorted(folder.glob("model-*.safetensors"))[1].unlink()


def _random_folder(original, folder: Path) -> None:
    folder.mkdir()
    (folder / "notes.txt").write_text("not a checkpoint\n")


def _truncated_shard(original, folder: Path) -> None:
    write_release(original, str(folder))
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:100])


def _no_connector(original, folder: Path) -> None:
    write_release(original, str(folder), shard_size=None)
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith("diffusion_connector.")},
              str(folder / "model.safetensors"), metadata={"format": "pt"})


def _wrong_dit_config(original, folder: Path) -> None:
    write_release(original, str(folder))
    config = json.loads((folder / "sana" / "config.json").read_text())
    config["num_layers"] = 3
    (folder / "sana" / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("make, message", [
    (_plain_qwen3_vl, "a plain Qwen3-VL checkpoint: no sana., vae., diffusion_connector. tensors"),
    (_random_folder, "has no config.json"),
    (_missing_shard, "lacks 1 of the"),
    (_truncated_shard, "is not a readable safetensors file"),
    (_no_connector, "no diffusion_connector. tensors"),
    (_wrong_dit_config, "SANA transformer (sana.) tensors do not match its architecture"),
], ids=["plain-qwen3-vl", "random-folder", "missing-shard", "truncated-shard", "no-connector", "wrong-dit-config"])
def test_another_layout_is_refused_and_nothing_is_registered(tmp_path, original, make, message):
    folder = tmp_path / "given"
    make(original, folder)
    project = Project(tmp_path / "project")
    with pytest.raises(InputError, match=None) as e:
        import_gem_2b(project, folder, "x")
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (project.runs_dir / "imported").exists() or not any((project.runs_dir / "imported").iterdir())
    assert not (project.root / "mlruns").exists()  # MLflow was not touched


def test_cli_refuses_another_layout_in_one_line_with_exit_2(tmp_path, original):
    project = tmp_path / "project"
    (project / "recipes").mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    _plain_qwen3_vl(original, tmp_path / "qwen")
    env = {k: v for k, v in os.environ.items() if k not in ("GEMCTL_TRACKING_URI", "GEMCTL_PROJECT")}
    r = subprocess.run([GEMCTL, "import", "gem-2b", str(tmp_path / "qwen"), "--as", "q"], cwd=project,
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "plain Qwen3-VL checkpoint" in lines[0], r.stderr
    assert not (project / "runs").exists() and not (project / "mlruns").exists()
    shutil.rmtree(tmp_path / "qwen")


def test_a_stage_takes_the_imported_weights_with_the_recipes_settings(tmp_path, original):
    import dataclasses

    from gem_models.config import ConnectorConfig
    from gem_stages.imported import adopt_imported

    write_release(original, str(tmp_path / "rel"))
    project = Project(tmp_path / "project")
    import_gem_2b(project, tmp_path / "rel")
    folder = Path(resolve(project, "rel")["dir"])
    recipe = tiny_config(space="latent", action="flow")  # the release has no action expert: a fresh one
    model = adopt_imported("stage3", "imported:rel", folder, recipe, seed=0)
    assert model.cfg == recipe and model.processor.depth_long_side == 64 and model.action_expert is not None
    assert torch.equal(model.connector.fc1.weight, original.connector.fc1.weight)

    wider = dataclasses.replace(recipe, connector=ConnectorConfig(width=32))
    message = r"model.connector.width is 64 but the recipe says 32: .*\(-o model.connector.width=64\)"
    with pytest.raises(InputError, match=message):
        adopt_imported("stage3", "imported:rel", folder, wider, seed=0)
    pixel = tiny_config(space="pixel")
    with pytest.raises(InputError, match=r"model.depth.space is 'latent' but the recipe says 'pixel'"):
        adopt_imported("stage3", "imported:rel", folder, pixel, seed=0)
