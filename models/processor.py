"""GemProcessor: LLaVA/Qwen-style samples -> one batch of tensors for GemModel (text, images, depth targets).

Sample: {"images": [PIL.Image, ...],
         "conversations": [{"from": "human"|"gpt"|"system", "value": "...<image>..."}, ...],
         "depths": [np.ndarray (H, W) metres | None per image],
         "generation_prompt": bool}  ("depths" optional; "generation_prompt" default True, see below).

Depth targets follow `depth_encoding` (depth_encoding.py): spectral_inverse targets are built from the depth map
nearest-resized to the image's PROCESSED size (after the image processor's smart resize, as the release does), so
a map need not have its image's size; inferno_linear targets are depth_long_side squares.

Chat layout (Qwen): <|im_start|>user\n ... <|im_end|>\n<|im_start|>assistant\n ... <|im_end|>\n, every
<image> replaced by <|vision_start|> + N x <|image_pad|> + <|vision_end|> with N = t*h*w / merge^2 of the
image's patch grid. Labels are -100 except the assistant answers and their <|im_end|>. A conversation that
ends with a user turn gets the generation prompt "<|im_start|>assistant\n" appended (VLA prompts and
evaluation), identically in training and inference, unless the sample has "generation_prompt": False (the
released GEM-VLA's prompt ends with the user turn).

No torchvision: the image processor is transformers' PIL implementation and there is no video processor. A saved
processor also loads with transformers alone, as hf_processor.QwenVLImageProcessor.
"""

import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from .config import BackboneConfig
from .depth_encoding import DEPTH_ENCODINGS, encode_depth, encode_image, target_size
from .hf_processor import CHAT_TEMPLATE, QwenVLImageProcessor
from .tokenizer import load_tokenizer

TARGETS = ("depth", "rgb")  # what the depth generator is trained to draw (model.depth.target)

IMAGE_PLACEHOLDER = "<image>"
IGNORE_INDEX = -100
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
SETTINGS_FILE = "gem_processor.json"


def make_image_processor(cfg: BackboneConfig, pretrained: str | None = None) -> Qwen2VLImageProcessorPil:
    """The backbone's image processor (PIL backend) with min/max pixels from the config."""
    size = {"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels}
    if pretrained is not None:
        proc = Qwen2VLImageProcessorPil.from_pretrained(pretrained)
        proc.size = size
        return proc
    # Qwen3-VL normalises with mean/std 0.5, Qwen2.5-VL with CLIP statistics (as released).
    mean, std = ([0.5] * 3, [0.5] * 3) if cfg.family == "qwen3_vl" else (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    return Qwen2VLImageProcessorPil(
        size=size,
        patch_size=cfg.patch_size,
        merge_size=cfg.spatial_merge_size,
        temporal_patch_size=2,
        image_mean=list(mean),
        image_std=list(std),
    )


@dataclass
class _Round:
    """One user(+assistant) exchange: the unit truncation may drop, so an image's tokens are never cut."""

    ids: list[int]
    labels: list[int]
    num_images: int


class GemProcessor:
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: Qwen2VLImageProcessorPil,
        max_length: int = 16384,
        depth_long_side: int = 448,
        depth_multiple_of: int = 32,
        padding_side: str = "right",
        depth_encoding: str = "spectral_inverse",
        target: str = "depth",
    ):
        if depth_encoding not in DEPTH_ENCODINGS:
            raise ValueError(f"unknown depth encoding {depth_encoding!r}; expected one of {DEPTH_ENCODINGS}")
        if target not in TARGETS:
            raise ValueError(f"unknown generator target {target!r}; expected one of {TARGETS}")
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.max_length = max_length
        self.depth_long_side = depth_long_side
        self.depth_multiple_of = depth_multiple_of
        self.depth_encoding = depth_encoding
        self.target = target  # "rgb": the generator reconstructs the image instead of its depth (an ablation)
        self.padding_side = padding_side
        tid = tokenizer.convert_tokens_to_ids
        self.im_start_id, self.im_end_id = tid("<|im_start|>"), tid("<|im_end|>")
        self.vision_start_id, self.vision_end_id = tid("<|vision_start|>"), tid("<|vision_end|>")
        self.image_pad_id = tid("<|image_pad|>")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tid("<|endoftext|>")
        self.merge_size = image_processor.merge_size
        self._newline = self._text_ids("\n")
        self._headers = {
            role: [self.im_start_id] + self._text_ids(f"{role}\n") for role in ("system", "user", "assistant")
        }

    # ----- text -----
    def _text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _user_ids(self, text: str, tokens_per_image: list[int]) -> list[int]:
        pieces = text.split(IMAGE_PLACEHOLDER)
        ids = self._text_ids(pieces[0])
        for n, piece in zip(tokens_per_image, pieces[1:]):
            ids += (
                [self.vision_start_id]
                + [self.image_pad_id] * n
                + [self.vision_end_id]
                + self._text_ids(piece)
            )
        return ids

    def _rounds(self, conversations: list[dict], tokens_per_image: list[int],
                generation_prompt: bool = True) -> list[_Round]:
        rounds, ids, labels, used = [], [], [], 0
        for turn in conversations:
            role = ROLES.get(turn["from"])
            if role is None:
                raise ValueError(
                    f"unknown conversation role {turn['from']!r}; expected one of {sorted(ROLES)}"
                )
            text = turn["value"]
            if role == "assistant":
                answer = self._text_ids(text) + [self.im_end_id]
                ids += self._headers["assistant"] + answer + self._newline
                labels += (
                    [IGNORE_INDEX] * len(self._headers["assistant"])
                    + answer
                    + [IGNORE_INDEX] * len(self._newline)
                )
                rounds.append(_Round(ids, labels, used))
                ids, labels, used = [], [], 0
                continue
            n = text.count(IMAGE_PLACEHOLDER) if role == "user" else 0
            body = self._user_ids(text, tokens_per_image[:n]) if role == "user" else self._text_ids(text)
            tokens_per_image = tokens_per_image[n:]
            used += n
            block = self._headers[role] + body + [self.im_end_id] + self._newline
            ids += block
            labels += [IGNORE_INDEX] * len(block)
        if ids:  # trailing user turn: add the generation prompt (unless the sample says generation_prompt: False)
            if generation_prompt:
                ids += self._headers["assistant"]
                labels += [IGNORE_INDEX] * len(self._headers["assistant"])
            rounds.append(_Round(ids, labels, used))
        return rounds

    # ----- one sample -----
    def _encode(self, sample: dict) -> dict:
        images = [
            im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im))
            for im in sample.get("images") or []
        ]
        images = [im.convert("RGB") for im in images]
        depths = sample.get("depths")
        depths = [None] * len(images) if depths is None else list(depths)
        if len(depths) != len(images):
            raise ValueError(f"{len(depths)} depth maps for {len(images)} images")
        conversations = [dict(t) for t in sample["conversations"]]
        n_placeholders = sum(
            t["value"].count(IMAGE_PLACEHOLDER) for t in conversations if ROLES.get(t["from"]) == "user"
        )
        if (
            n_placeholders == 0 and images
        ):  # LLaVA data without placeholders: images go first in the first user turn
            first_user = next(t for t in conversations if ROLES.get(t["from"]) == "user")
            first_user["value"] = (IMAGE_PLACEHOLDER + "\n") * len(images) + first_user["value"]
            n_placeholders = len(images)
        if n_placeholders != len(images):
            raise ValueError(
                f"{n_placeholders} {IMAGE_PLACEHOLDER} placeholders in user turns but {len(images)} images"
            )

        pixels, grids = [], []
        for im in images:
            out = self.image_processor(images=[im], return_tensors="np")
            pixels.append(out["pixel_values"])
            grids.append(out["image_grid_thw"][0])
        tokens_per_image = [int(np.prod(g)) // self.merge_size**2 for g in grids]

        rounds = self._rounds(conversations, tokens_per_image, sample.get("generation_prompt", True))
        # Truncation drops whole trailing rounds (with their images), never part of an image's tokens.
        while sum(len(r.ids) for r in rounds) > self.max_length and len(rounds) > 1:
            rounds.pop()
        total = sum(len(r.ids) for r in rounds)
        if total > self.max_length:
            n_image_tokens = sum(tokens_per_image[: rounds[0].num_images])
            raise ValueError(
                f"the first round of a sample needs {total} tokens ({n_image_tokens} of them image tokens) "
                f"but max_length is {self.max_length}; raise max_length or lower max_pixels"
            )
        n_keep = sum(r.num_images for r in rounds)
        patch = self.image_processor.patch_size
        processed = [(int(g[1]) * patch, int(g[2]) * patch) for g in grids[:n_keep]]  # smart-resized (h, w)
        depth_targets = [
            None if depth is None
            else encode_image(im, target_size(self.depth_encoding, *size, self.depth_long_side,
                                              self.depth_multiple_of)) if self.target == "rgb"
            else encode_depth(self.depth_encoding, depth, size, self.depth_long_side, self.depth_multiple_of)
            for im, size, depth in zip(images, processed, depths[:n_keep])
        ]
        return {
            "ids": [i for r in rounds for i in r.ids],
            "labels": [i for r in rounds for i in r.labels],
            "pixels": pixels[:n_keep],
            "grids": grids[:n_keep],
            "sizes": [
                target_size(self.depth_encoding, h, w, self.depth_long_side, self.depth_multiple_of)
                for h, w in processed
            ],
            "depths": depth_targets,
        }

    # ----- batch -----
    def __call__(self, samples: list[dict], padding_side: str | None = None) -> dict:
        """Samples -> batch dict of tensors (see module doc). `padding_side="left"` for generation prompts."""
        side = padding_side or self.padding_side
        enc = [self._encode(s) for s in samples]
        length = max(len(e["ids"]) for e in enc)
        input_ids = torch.full((len(enc), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(enc), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(enc), length), dtype=torch.long)
        for b, e in enumerate(enc):
            n = len(e["ids"])
            cols = slice(0, n) if side == "right" else slice(length - n, length)
            input_ids[b, cols] = torch.tensor(e["ids"])
            labels[b, cols] = torch.tensor(e["labels"])
            attention_mask[b, cols] = 1
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            # M-RoPE needs to know which tokens are image tokens (1) vs text (0); both Qwen families read it.
            "mm_token_type_ids": (input_ids == self.image_pad_id).int(),
        }
        return batch | self._images(enc)

    def pack(self, samples: list[dict]) -> dict:
        """Samples -> ONE sequence without padding (the release's data_flatten): input_ids, labels and
        mm_token_type_ids are [1, sum of the samples' lengths], "cu_seqlens" [num_samples + 1] (int32) marks where
        each sample starts, and there is no attention_mask. The images and depth targets are those of `__call__`,
        in the same order. GemModel gives each sample position ids from 0 and keeps attention within a sample."""
        enc = [self._encode(s) for s in samples]
        input_ids = torch.tensor([i for e in enc for i in e["ids"]], dtype=torch.long)[None]
        labels = torch.tensor([i for e in enc for i in e["labels"]], dtype=torch.long)[None]
        lengths = torch.tensor([0] + [len(e["ids"]) for e in enc])
        cu_seqlens = lengths.cumsum(0).to(torch.int32)
        # the last token of a sample must not learn to predict the next sample's first (it is a header anyway)
        labels[0, cu_seqlens[:-1].long()] = IGNORE_INDEX
        batch = {
            "input_ids": input_ids,
            "labels": labels,
            "mm_token_type_ids": (input_ids == self.image_pad_id).int(),
            "cu_seqlens": cu_seqlens,
        }
        return batch | self._images(enc)

    def _images(self, enc: list[dict]) -> dict:
        """The batch's images (processor order: sample by sample, left to right) and their depth targets."""
        batch = {
            "image_sample_index": torch.tensor(
                [b for b, e in enumerate(enc) for _ in e["grids"]], dtype=torch.long
            ),
            "depth_sizes": torch.tensor([s for e in enc for s in e["sizes"]], dtype=torch.long).reshape(
                -1, 2
            ),
        }
        pixels = [p for e in enc for p in e["pixels"]]
        if pixels:
            batch["pixel_values"] = torch.from_numpy(np.concatenate(pixels)).float()
            batch["image_grid_thw"] = torch.from_numpy(np.stack([g for e in enc for g in e["grids"]])).long()
        depths = [d for e in enc for d in e["depths"]]
        batch["depth_image_index"] = torch.tensor(
            [i for i, d in enumerate(depths) if d is not None], dtype=torch.long
        )
        batch["depth_pixel_values"] = [d for d in depths if d is not None]
        return batch

    def decode(self, ids, **kwargs) -> str:
        return self.tokenizer.decode(ids, **kwargs)

    # ----- persistence -----
    def save_pretrained(self, directory: str) -> None:
        """Tokenizer, image processor and this processor's settings; and, for transformers alone without
        torchvision, QwenVLImageProcessor (AutoProcessor.from_pretrained(directory, trust_remote_code=True))."""
        os.makedirs(directory, exist_ok=True)
        chat_template = self.tokenizer.chat_template or CHAT_TEMPLATE
        QwenVLImageProcessor(self.image_processor, self.tokenizer, chat_template=chat_template).save_pretrained(
            directory
        )
        self.image_processor.save_pretrained(directory)
        settings = {
            "max_length": self.max_length,
            "depth_long_side": self.depth_long_side,
            "depth_multiple_of": self.depth_multiple_of,
            "padding_side": self.padding_side,
            "depth_encoding": self.depth_encoding,
            "target": self.target,
        }
        with open(os.path.join(directory, SETTINGS_FILE), "w") as f:
            json.dump(settings, f, indent=2)

    @classmethod
    def from_pretrained(cls, directory: str, **overrides) -> "GemProcessor":
        """Tokenizer + image processor from `directory`; settings from gem_processor.json or overrides."""
        settings = {}
        path = os.path.join(directory, SETTINGS_FILE)
        if os.path.exists(path):
            with open(path) as f:
                settings = json.load(f)
        settings.update(overrides)
        return cls(load_tokenizer(directory), Qwen2VLImageProcessorPil.from_pretrained(directory), **settings)


def batch_to(batch: dict, device: torch.device | str) -> dict:
    """Move every tensor (and list of tensors) of a batch to `device`."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, list):
            out[k] = [x.to(device, non_blocking=True) if isinstance(x, torch.Tensor) else x for x in v]
        else:
            out[k] = v
    return out
