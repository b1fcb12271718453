"""GemModel: Qwen-VL backbone + connector + SANA depth generator (+ action expert), and the GEM losses.

L = w_lm * L_CE + w_depth * L_depth + w_action * L_action (stage 3: 1 / 0.1 / 0, stage 4: 0 / 0.1 / 1).
The depth condition is each image's last-layer visual-token states, through the connector, into the DiT's
cross-attention; classifier-free guidance zeroes the states before the connector (null condition = connector(0)). Which parts train is decided outside, through `module_groups()` and requires_grad.
"""

import dataclasses
import json
import os
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from . import packed_attention
from .action_autoregressive import AutoregressiveActionExpert
from .action_flow import FlowActionExpert
from .backbone import (
    backbone_module_groups,
    build_backbone,
    load_backbone,
    packed_position_ids,
    vision_token_ids,
)
from .conditioning import gather_image_tokens
from .config import ActionExpertConfig, GemModelConfig
from .connector import Connector
from .depth_generator import DepthGenerator
from .processor import IGNORE_INDEX, GemProcessor, make_image_processor
from .tokenizer import load_tokenizer, train_tiny_tokenizer

LOSS_PARTS = ("lm", "depth", "action")
CONFIG_FILE = "gem_config.json"  # the GemModelConfig a checkpoint was saved with


def _config_from_dict(cls, data: dict):
    """The config dataclass `cls` from its `dataclasses.asdict` form (nested dataclasses included)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {sorted(unknown)}: the checkpoint is from another version")
    return cls(**{k: _config_from_dict(fields[k].type, v) if dataclasses.is_dataclass(fields[k].type) else v
                  for k, v in data.items()})


def _differences(a: dict, b: dict, prefix: str = "") -> dict[str, tuple]:
    """Dotted key -> (a's value, b's value) for every leaf where two nested dicts differ."""
    out = {}
    for k in a.keys() | b.keys():
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out.update(_differences(x, y, f"{prefix}{k}."))
        elif x != y:
            out[f"{prefix}{k}"] = (x, y)
    return dict(sorted(out.items()))


def build_action_expert(cfg: ActionExpertConfig, vlm_hidden: int, num_hidden_states: int) -> nn.Module | None:
    if cfg.kind == "flow":
        return FlowActionExpert(cfg, vlm_hidden, num_hidden_states)
    if cfg.kind == "autoregressive":
        return AutoregressiveActionExpert(cfg, vlm_hidden)
    return None


def _seeded(seed: int, fn):
    """Build a module under its own seed without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


class GemModel(nn.Module):
    def __init__(
        self,
        cfg: GemModelConfig,
        backbone: nn.Module,
        processor: GemProcessor,
        connector: Connector,
        depth_generator: DepthGenerator,
        action_expert: nn.Module | None,
    ):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        self.processor = processor  # plain object, not a module
        self.connector = connector
        self.depth_generator = depth_generator
        self.action_expert = action_expert
        self.token_ids = vision_token_ids(backbone)
        mine = {
            "vision_start": processor.vision_start_id,
            "vision_end": processor.vision_end_id,
            "image_pad": processor.image_pad_id,
        }
        if mine != self.token_ids:
            raise ValueError(
                f"tokenizer vision token ids {mine} differ from the backbone config's {self.token_ids}"
            )

    # ----- construction and persistence -----
    @classmethod
    def build(cls, cfg: GemModelConfig, corpus: Iterable[str] | None = None, seed: int = 0) -> "GemModel":
        """Tiny parts random-init (seeded; tokenizer trained on `corpus`), the others from_pretrained."""
        b = cfg.backbone
        if b.pretrained is not None:
            # "~/x" is a folder in the user's home: transformers would take it for a hub id
            b = dataclasses.replace(b, pretrained=os.path.expanduser(b.pretrained))
            tokenizer = load_tokenizer(b.pretrained)
        else:
            tokenizer = train_tiny_tokenizer(corpus, b.vocab_size)
        processor = GemProcessor(
            tokenizer,
            make_image_processor(b, b.pretrained),
            b.max_length,
            cfg.depth.image_long_side,
            cfg.depth.multiple_of,
            target=cfg.depth.target,
        )
        backbone = build_backbone(b, tokenizer, seed)
        hidden = backbone.config.text_config.hidden_size
        n_states = backbone.config.text_config.num_hidden_layers + 1
        connector = _seeded(seed + 1, lambda: Connector(hidden, cfg.connector))
        depth = DepthGenerator.build(cfg.depth, cfg.connector.width, seed + 2)
        action = _seeded(seed + 3, lambda: build_action_expert(cfg.action, hidden, n_states))
        return cls(cfg, backbone, processor, connector, depth, action)

    def save(self, directory: str) -> None:
        """Write everything under `directory` (the caller renames a temp dir for atomicity); CONFIG_FILE holds the
        whole GemModelConfig, which is all `load` needs besides the weights."""
        os.makedirs(directory, exist_ok=True)
        self.backbone.save_pretrained(os.path.join(directory, "backbone"))
        self.processor.save_pretrained(os.path.join(directory, "backbone"))
        self.depth_generator.save(os.path.join(directory, "depth_generator"))
        save_file(self.connector.state_dict(), os.path.join(directory, "connector.safetensors"))
        if self.action_expert is not None:
            state = {k: v.contiguous() for k, v in self.action_expert.state_dict().items()}
            save_file(state, os.path.join(directory, "action_expert.safetensors"))
        with open(os.path.join(directory, CONFIG_FILE), "w") as f:
            json.dump(dataclasses.asdict(self.cfg), f, indent=2)

    @classmethod
    def load(cls, directory: str, cfg: GemModelConfig | None = None, seed: int = 0) -> "GemModel":
        """Restore a `save`d model with the configuration it was saved with (its CONFIG_FILE).

        `cfg`, the configuration the caller expects, is optional and only checked: a field that differs from the
        saved one is refused (ValueError naming each), with one exception. A checkpoint without an action expert
        (a GEM VLM) loaded with a cfg.action that asks for one gets a fresh, `seed`ed expert: that is how GEM-VLA
        starts from a stage-3 model.
        """

        def path(*parts: str) -> str:
            return os.path.join(directory, *parts)

        with open(path(CONFIG_FILE)) as f:
            saved = _config_from_dict(GemModelConfig, json.load(f))
        if cfg is not None:
            if saved.action.kind == "none":
                saved = dataclasses.replace(saved, action=cfg.action)
            diff = _differences(dataclasses.asdict(saved), dataclasses.asdict(cfg))
            if diff:
                raise ValueError(f"the model in {directory} was saved with another configuration (saved -> given): "
                                 + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items()))
        cfg = saved
        backbone = load_backbone(path("backbone"), cfg.backbone.family)
        processor = GemProcessor.from_pretrained(
            path("backbone"),
            max_length=cfg.backbone.max_length,
            depth_long_side=cfg.depth.image_long_side,
            depth_multiple_of=cfg.depth.multiple_of,
            target=cfg.depth.target,
        )
        processor.image_processor.size = {
            "shortest_edge": cfg.backbone.min_pixels,
            "longest_edge": cfg.backbone.max_pixels,
        }
        hidden = backbone.config.text_config.hidden_size
        connector = Connector(hidden, cfg.connector)
        connector.load_state_dict(load_file(path("connector.safetensors")))
        depth = DepthGenerator.load(path("depth_generator"), cfg.depth)
        n_states = backbone.config.text_config.num_hidden_layers + 1
        action = _seeded(seed + 3, lambda: build_action_expert(cfg.action, hidden, n_states))
        if action is not None and os.path.exists(path("action_expert.safetensors")):
            action.load_state_dict(load_file(path("action_expert.safetensors")))
        return cls(cfg, backbone, processor, connector, depth, action)

    def module_groups(self) -> dict[str, nn.Module]:
        """Disjoint groups covering every trainable parameter (the frozen VAE belongs to none)."""
        groups = backbone_module_groups(self.backbone)
        groups["connector"] = self.connector
        groups["depth_generator"] = self.depth_generator.transformer
        if self.action_expert is not None:
            groups["action_expert"] = self.action_expert
        return groups

    def set_action_statistics(self, stats: dict) -> None:
        """Normalisation stats {"action": {"mean", "std", "min", "max"}, "state": {...}}, per-dim lists."""
        if self.action_expert is None:
            raise ValueError("the model has no action expert (action.kind = none)")
        self.action_expert.normalizer.set_from_statistics(stats)

    def enable_packed_attention(self) -> None:
        """Packed batches attend sample by sample (packed_attention.py) instead of through a [T, T] mask, when the
        backbone's language model runs SDPA; flash-attention already does (variable-length kernels)."""
        if self.backbone.config.text_config._attn_implementation == "sdpa":
            self.backbone.set_attn_implementation({"text_config": packed_attention.NAME})

    def enable_gradient_checkpointing(self) -> None:
        # activation_checkpointing_enable is transformers 5's name; the older one still works but warns at every run
        enable = getattr(self.backbone, "activation_checkpointing_enable", None)
        if enable is not None:
            enable({"use_reentrant": False})
        else:
            self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.depth_generator.transformer.enable_gradient_checkpointing()

    def compile_blocks(self) -> None:
        """torch.compile each transformer block of the backbone (LLM and ViT) and of the DiT, in place: the
        elementwise work between a block's matrix products (norms, rotary, activations, casts) fuses into few
        kernels. In place (nn.Module.compile), so parameter names and checkpoints stay those of the eager model.
        The first steps pay the compilation, and again for each new input shape until torch marks it dynamic."""
        for block in (*self.backbone.model.language_model.layers, *self.backbone.model.visual.blocks,
                      *self.depth_generator.transformer.transformer_blocks):
            block.compile()

    # ----- pieces -----
    def backbone_states(self, batch: dict, all_layers: bool = False):
        """Backbone forward without the LM head -> transformers output (last_hidden_state, hidden_states).
        A packed batch (processor.pack) goes in as one sequence with per-sample position ids and no mask."""
        kwargs = {k: batch[k] for k in ("pixel_values", "image_grid_thw") if k in batch}
        if "cu_seqlens" in batch:
            kwargs["position_ids"] = self.packed_position_ids(batch)
        return self.backbone.model(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            mm_token_type_ids=batch["mm_token_type_ids"],
            output_hidden_states=all_layers,
            use_cache=False,
            **kwargs,
        )

    def packed_position_ids(self, batch: dict) -> Tensor:
        """[4, 1, T] for a packed batch: each sample's positions from 0 (text row, then M-RoPE t/h/w)."""
        return packed_position_ids(
            self.backbone, batch["input_ids"], batch["mm_token_type_ids"], batch["cu_seqlens"],
            batch.get("image_grid_thw"),
        )

    def lm_loss(self, last_hidden: Tensor, labels: Tensor) -> Tensor:
        """Next-token cross-entropy, mean over answer tokens of the batch; logits only where labels exist."""
        targets = labels[:, 1:]
        valid = targets != IGNORE_INDEX
        logits = self.backbone.lm_head(last_hidden[:, :-1][valid]).float()
        return F.cross_entropy(logits, targets[valid])

    def depth_states(self, last_hidden: Tensor, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Per image: the last-layer states between vision start/end [N, L, H] (zeros in padding) and mask [N, L].
        They reach the DiT through `condition`, after the CFG drop (the release drops before the connector)."""
        return gather_image_tokens(
            last_hidden, input_ids, self.token_ids["vision_start"], self.token_ids["vision_end"]
        )

    def condition(self, states: Tensor) -> Tensor:
        """Image states [N, L, H] -> the DiT's condition [N, L, W] (the connector, in its own dtype)."""
        return self.connector(states.to(self.connector.fc1.weight.dtype))

    def depth_conditions(self, last_hidden: Tensor, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Per image: connector(image states) [N, L, W] and mask [N, L] (conditional branch, no drop)."""
        states, mask = self.depth_states(last_hidden, input_ids)
        return self.condition(states), mask

    def _zero_loss(self) -> Tensor:
        # Touches every trainable parameter: DDP ranks whose batch had nothing to learn still all-reduce.
        params = [p for p in self.parameters() if p.requires_grad]
        return sum((p.sum() * 0.0 for p in params), torch.zeros((), device=self.connector.fc1.weight.device))

    # ----- training -----
    def forward(
        self, batch: dict, weights: dict[str, float], generator: torch.Generator, per_image: bool = False
    ) -> dict:
        """-> {"loss": weighted total, "lm"/"depth"/"action": detached scalar tensors of the computed parts (tensors,
        not floats: reading a value is a device sync, which the trainer does only on log steps)}; with
        per_image=True also "depth_per_image": detached per-image depth losses (images with depth, in order).

        Stage-4 batches add "state" [B, state_dim], "actions" [B, chunk, action_dim] (raw units) and
        optionally "action_mask" [B, chunk] (False = padding past the episode's end, not in the loss).

        Only parts with weight > 0 are computed. A part with nothing to learn from (no answer tokens, no
        depth targets) is skipped and absent from the result; the depth loss of a batch that mixes images with
        and without depth is over the images with depth. If nothing is left, "loss" is a zero reaching every
        trainable parameter (and the result has no other key).
        """
        unknown = set(weights) - set(LOSS_PARTS)
        if unknown:
            raise ValueError(f"unknown loss weights {sorted(unknown)}; expected {LOSS_PARTS}")
        w = {k: float(weights.get(k, 0.0)) for k in LOSS_PARTS}
        if not any(v > 0 for v in w.values()):
            raise ValueError(f"no loss has a positive weight: {weights}")
        if w["action"] > 0 and self.action_expert is None:
            raise ValueError("action loss requested but the model has no action expert (action.kind = none)")
        if w["action"] > 0 and "cu_seqlens" in batch:
            raise ValueError("the action loss reads one row per sample: it cannot train on a packed batch")

        all_layers = w["action"] > 0 and isinstance(self.action_expert, FlowActionExpert)
        out = self.backbone_states(batch, all_layers=all_layers)
        last = out.last_hidden_state
        result, total = {}, None

        def add(name: str, value: Tensor) -> None:
            nonlocal total
            result[name] = value.detach()
            total = w[name] * value if total is None else total + w[name] * value

        if w["lm"] > 0 and bool((batch["labels"][:, 1:] != IGNORE_INDEX).any()):  # prompt-only batches: skip
            add("lm", self.lm_loss(last, batch["labels"]))
        if w["depth"] > 0 and len(batch.get("depth_pixel_values", [])) > 0:
            states, mask = self.depth_states(last, batch["input_ids"])
            index = batch["depth_image_index"]
            mean, losses = self.depth_generator.loss(
                batch["depth_pixel_values"], states[index], mask[index], generator, self.condition
            )
            add("depth", mean)
            if per_image:
                result["depth_per_image"] = losses.detach()
        if w["action"] > 0:
            states = out.hidden_states if all_layers else (last,)
            expert = self.action_expert
            mask = batch["attention_mask"]
            loss = expert.loss(
                states, mask, batch["state"], batch["actions"], generator, batch.get("action_mask")
            )
            add("action", loss)
        result["loss"] = total if total is not None else self._zero_loss()
        return result

    # ----- inference -----
    @torch.no_grad()
    def sample_depth(
        self,
        batch: dict,
        steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
    ) -> list[Tensor]:
        """A depth image [3, h, w] in [0, 1] per image of the batch (sizes from batch["depth_sizes"])."""
        last = self.backbone_states(batch).last_hidden_state
        states, mask = self.depth_states(last, batch["input_ids"])
        sizes = [tuple(s) for s in batch["depth_sizes"].tolist()]
        return self.depth_generator.sample(states, mask, sizes, self.condition, steps, guidance_scale, generator)

    @torch.no_grad()
    def predict_actions(self, batch: dict, generator: torch.Generator | None = None) -> Tensor:
        """Raw (unnormalised) action chunk [B, chunk, action_dim] from a prompt batch with batch["state"]."""
        if self.action_expert is None:
            raise ValueError("the model has no action expert (action.kind = none)")
        all_layers = isinstance(self.action_expert, FlowActionExpert)
        out = self.backbone_states(batch, all_layers=all_layers)
        states = out.hidden_states if all_layers else (out.last_hidden_state,)
        return self.action_expert.predict(states, batch["attention_mask"], batch["state"], generator)

    @torch.no_grad()
    def generate(self, batch: dict, max_new_tokens: int = 64) -> list[str]:
        """Greedy answers for a LEFT-padded prompt batch (processor(samples, padding_side="left"))."""
        if bool((batch["attention_mask"][:, -1] == 0).any()):
            raise ValueError("generate needs a left-padded batch: processor(samples, padding_side='left')")
        kwargs = {
            k: batch[k]
            for k in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")
            if k in batch
        }
        out = self.backbone.generate(
            **kwargs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=self.processor.im_end_id,
            pad_token_id=self.processor.pad_id,
        )
        new = out[:, batch["input_ids"].shape[1] :]
        return [self.processor.decode(row, skip_special_tokens=True) for row in new]
