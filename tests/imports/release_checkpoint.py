"""Write a GemModel in the released GEM-2B layout, as the release's own save would (see gem_models.release_layout).

The state dict goes through `save_pretrained(state_dict=...)` of the Qwen3-VL backbone: the release's class is
a subclass of it, and the HF Trainer saves it so; that call drops the tied lm_head and shards by size.
"""

import os

from gem_models.gem import GemModel
from gem_models.release_layout import to_release_key


def release_state(model: GemModel) -> dict:
    # not cloned: the tied lm_head shares the embedding's storage, and save_pretrained drops it, as in the release
    return {to_release_key(k): v.detach() for k, v in model.state_dict().items()}


def write_release(model: GemModel, directory: str, shard_size: str = "200KB", configs_beside: bool = True) -> None:
    """The release's files: config.json, generation_config.json, model-*.safetensors + index (shard_size None:
    one model.safetensors), the processor (tokenizer, preprocessor_config.json); with configs_beside, SANA's and
    DC-AE's configs as sana/config.json and vae/config.json (the release's own are SANA 1.5 1.6B's)."""
    kwargs = {"max_shard_size": shard_size} if shard_size else {"max_shard_size": "10GB"}
    model.backbone.save_pretrained(directory, state_dict=release_state(model), **kwargs)
    model.processor.tokenizer.save_pretrained(directory)
    model.processor.image_processor.save_pretrained(directory)
    if configs_beside:
        model.depth_generator.transformer.save_config(os.path.join(directory, "sana"))
        model.depth_generator.vae.save_config(os.path.join(directory, "vae"))
