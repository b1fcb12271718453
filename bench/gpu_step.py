"""The stage-3 joint step of GEM-2B on one GPU: tokens/s, images/s, peak memory and model FLOPs utilisation (MFU).

    python bench/gpu_step.py                      # paper scale, random init, CUDA
    python bench/gpu_step.py --tiny --steps 2     # recipes/tiny.yaml's model on the CPU (a smoke run)
    python bench/gpu_step.py --batch 8 --mixed 896x672 448x448 672x448 224x224 [--packed [--packed-mask]]
                                                  # variable image sizes, padded or packed (stages.<s>.packing)

Paper scale is the gem-2b recipe's model built from models/presets.py (Qwen3-VL-2B, SANA 1.5 1.6B, DC-AE f32c32) with
random weights, nothing downloaded, trained as the recipe's stage 3 trains it: fp32 master weights under bf16
autocast, gradient checkpointing, its trainable groups, loss weights lm 1 / depth 0.1, clipping and AdamW. The loop is
Trainer.train_step without the data loader and checkpointing: the batch is synthetic and made once.

MFU = model FLOPs per step / step time / the card's peak dense bf16 FLOP/s. Model FLOPs are counted from the
architecture by the formulas below (matrix products only: norms, activations, rotary and the loss are left out):
a part that trains costs 3x its forward (the backward is twice the forward), the frozen ViT 1x, and gradient
checkpointing's recomputed forward is not counted (it is the price of the memory, not model work). The frozen DC-AE
encode of the depth targets is not counted either (convolutions, forward only): its time is overhead in the MFU.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gem_models.gem import GemModel  # noqa: E402
from gem_models.processor import IGNORE_INDEX  # noqa: E402

# Dense bf16 peak of the cards this runs on (the vendors' datasheets, without sparsity), by torch's device name.
PEAK_BF16_FLOPS = {"H100 80GB HBM3": 989.4e12, "H100 PCIe": 756.0e12, "H200": 989.4e12, "A100": 312.0e12}


# ----- model FLOPs: forward passes, as 2 x multiply-accumulates -----

def vit_forward_flops(patches: int, hidden: int, intermediate: int, depth: int, in_patch: int) -> int:
    """Qwen3-VL ViT over one image of `patches` patches (each `in_patch` = 3 x 2 x 16 x 16 values): the patch
    embedding, then per block qkv (h -> 3h), out proj (h -> h), MLP (h -> i -> h), and full bidirectional attention
    within the image (scores P x P x h and their weighted sum, 2 x P x P x h each)."""
    embed = 2 * patches * in_patch * hidden
    linears = 2 * patches * (3 * hidden * hidden + hidden * hidden + 2 * hidden * intermediate)
    attention = 2 * 2 * patches * patches * hidden
    return embed + depth * (linears + attention)


def merger_forward_flops(tokens: int, vit_hidden: int, merge: int, out_hidden: int, mergers: int) -> int:
    """`mergers` patch mergers (the final one plus the deepstack ones) over `tokens` merged tokens: each folds
    merge x merge patches, then Linear(m -> m) and Linear(m -> out) with m = vit_hidden x merge^2."""
    m = vit_hidden * merge * merge
    return mergers * 2 * tokens * (m * m + m * out_hidden)


def llm_forward_flops(seq: int, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
                      head_dim: int) -> int:
    """Qwen3 decoder over one sequence of `seq` tokens: per layer q (h -> heads x d), k and v (h -> kv_heads x d),
    o (heads x d -> h), SwiGLU (3 x h x i), and causal attention: scores and weighted sum, 2 x T x T x heads x d each,
    of which the causal half is work."""
    q, kv = heads * head_dim, kv_heads * head_dim
    linears = 2 * seq * (hidden * q + 2 * hidden * kv + q * hidden + 3 * hidden * intermediate)
    attention = 2 * 2 * seq * seq * q // 2
    return layers * (linears + attention)


def lm_head_forward_flops(answer_tokens: int, hidden: int, vocab: int) -> int:
    """Logits for the answer tokens only (GemModel.lm_loss computes no others)."""
    return 2 * answer_tokens * hidden * vocab


def connector_forward_flops(tokens: int, hidden: int, width: int) -> int:
    """Linear(h -> w) and Linear(w -> w) over every image token."""
    return 2 * tokens * (hidden * width + width * width)


def dit_forward_flops(latent_tokens: int, cond_tokens: int, *, in_channels: int, heads: int, head_dim: int,
                      cross_heads: int, cross_head_dim: int, cross_dim: int, caption_channels: int,
                      mlp_ratio: float, layers: int, patch: int = 1) -> int:
    """SANA DiT over one image of N = `latent_tokens` tokens (latent pixels / patch^2) conditioned on L = `cond_tokens`:
    patch embedding (c x p^2 -> D), caption projection on L (caption -> D -> D), then per block
      linear self-attention: q, k, v, out (D -> D), and per head V'K (d+1 x N x d) then (V'K)Q (same), V' = V padded
        with a row of ones (diffusers' SanaLinearAttnProcessor2_0);
      cross-attention: q, out on N (D <-> C, C = cross_heads x cross_head_dim), k, v on L (cross_dim -> C), softmax
        attention N x L x C twice;
      GLUMBConv: 1x1 conv D -> 2F, 3x3 depthwise conv on 2F, 1x1 conv F -> D, F = int(mlp_ratio x D);
    and the output projection (D -> c x p^2). Timestep embedding and modulation are per image, not per token: left out.
    """
    n, length = latent_tokens, cond_tokens
    d_model, cross, ff = heads * head_dim, cross_heads * cross_head_dim, int(mlp_ratio * heads * head_dim)
    io = 2 * n * in_channels * patch * patch * d_model * 2
    caption = 2 * length * (caption_channels * d_model + d_model * d_model)
    self_attn = 2 * n * 4 * d_model * d_model + heads * 2 * 2 * n * (head_dim + 1) * head_dim
    cross_attn = 2 * n * 2 * d_model * cross + 2 * length * 2 * cross_dim * cross + 2 * 2 * n * length * cross
    glu = 2 * n * (d_model * 2 * ff + 9 * 2 * ff + ff * d_model)
    return io + caption + layers * (self_attn + cross_attn + glu)


@dataclass
class Shapes:
    """One micro-batch of the benchmark: `batch` samples, one image each, every sample the same length unless
    `mixed` gives the images several sizes."""

    batch: int  # samples per step (the recipe's stage-3 batch_size is 1 per GPU)
    image: tuple[int, int]  # backbone image (height, width) in pixels, multiples of patch x merge
    text: int  # text tokens per sample besides the image's (prompt + answer)
    answer: int  # of those, answer tokens (the LM loss's targets)
    depth: tuple[int, int]  # depth target (height, width) in pixels, multiples of the model's multiple_of
    mixed: tuple[tuple[int, int], ...] = ()  # image sizes taken in turn by the samples instead of `image`

    def samples(self) -> list[Shapes]:
        """Each sample's own shapes (batch 1)."""
        sizes = [self.mixed[i % len(self.mixed)] if self.mixed else self.image for i in range(self.batch)]
        return [dataclasses.replace(self, batch=1, image=size, mixed=()) for size in sizes]

    def grid(self, patch: int) -> tuple[int, int]:
        return self.image[0] // patch, self.image[1] // patch

    def image_tokens(self, vision) -> int:
        """<|image_pad|> tokens of one image: its patches, merge x merge to a token (`vision`: the ViT's config)."""
        gh, gw = self.grid(vision.patch_size)
        return gh * gw // vision.spatial_merge_size**2

    def sequence(self, vision) -> int:
        """Tokens per sample: text, <|vision_start|>, the image's tokens, <|vision_end|>."""
        return self.text + 2 + self.image_tokens(vision)


def step_flops(parts: dict[str, nn.Module], shapes: Shapes) -> dict[str, int]:
    """Model FLOPs of one training step, by part: 3x forward for the parts stage 3 trains, 1x for the frozen ViT.

    parts: {"backbone", "connector", "depth_generator"}, as presets.meta_parts gives them (or a GemModel's).
    """
    if shapes.mixed:  # sample by sample: a packed or padded batch does each sample's model work, no more
        per_sample = [step_flops(parts, one) for one in shapes.samples()]
        return {k: sum(f[k] for f in per_sample) for k in per_sample[0]}
    backbone, depth = parts["backbone"], parts["depth_generator"]
    vision, text = backbone.config.vision_config, backbone.config.text_config
    gh, gw = shapes.grid(vision.patch_size)
    patches = gh * gw
    image_tokens, seq = shapes.image_tokens(vision), shapes.sequence(vision)
    dit = depth.transformer.config
    factor = depth.spatial_factor * dit.patch_size
    latent_tokens = (shapes.depth[0] // factor) * (shapes.depth[1] // factor)
    b = shapes.batch
    return {
        "vit": b * vit_forward_flops(patches, vision.hidden_size, vision.intermediate_size, vision.depth,
                                     3 * vision.temporal_patch_size * vision.patch_size**2),
        "mergers": 3 * b * merger_forward_flops(image_tokens, vision.hidden_size, vision.spatial_merge_size,
                                                vision.out_hidden_size, 1 + len(vision.deepstack_visual_indexes)),
        "llm": 3 * b * llm_forward_flops(seq, text.hidden_size, text.intermediate_size, text.num_hidden_layers,
                                         text.num_attention_heads, text.num_key_value_heads, text.head_dim),
        "lm_head": 3 * b * lm_head_forward_flops(shapes.answer - 1, text.hidden_size, text.vocab_size),
        "connector": 3 * b * connector_forward_flops(image_tokens, text.hidden_size,
                                                     parts["connector"].fc2.out_features),
        "dit": 3 * b * dit_forward_flops(
            latent_tokens, image_tokens, in_channels=dit.in_channels, heads=dit.num_attention_heads,
            head_dim=dit.attention_head_dim, cross_heads=dit.num_cross_attention_heads,
            cross_head_dim=dit.cross_attention_head_dim, cross_dim=dit.cross_attention_dim,
            caption_channels=dit.caption_channels, mlp_ratio=dit.mlp_ratio, layers=dit.num_layers,
            patch=dit.patch_size),
    }


# ----- the model and the batch -----

def paper_model(device: torch.device) -> GemModel:
    """gem-2b's architecture with random weights, built on `device` (models/presets.py: no download)."""
    from diffusers import AutoencoderDC, SanaTransformer2DModel
    from transformers import Qwen3VLForConditionalGeneration

    from gem_models.config import GemModelConfig
    from gem_models.connector import Connector
    from gem_models.depth_generator import DepthGenerator
    from gem_models.presets import DEPTH_TRANSFORMERS, VAES, backbone_config

    cfg = GemModelConfig()  # the defaults are GEM-2B's
    torch.manual_seed(0)
    with torch.device(device):  # presets.meta_parts builds the same parts on the meta device
        backbone = Qwen3VLForConditionalGeneration(backbone_config(cfg.backbone.pretrained)).float()
        connector = Connector(backbone.config.text_config.hidden_size, cfg.connector)
        transformer = SanaTransformer2DModel(**DEPTH_TRANSFORMERS[cfg.depth.pretrained_transformer])
        vae = AutoencoderDC(**VAES[cfg.depth.pretrained_vae])
    c = backbone.config
    # The step needs the vision token ids only, not a tokenizer: the batch is made of ids.
    ids = SimpleNamespace(vision_start_id=c.vision_start_token_id, vision_end_id=c.vision_end_token_id,
                          image_pad_id=c.image_token_id)
    return GemModel(cfg, backbone, ids, connector, DepthGenerator(cfg.depth, transformer, vae), None)


def tiny_model() -> GemModel:
    from gemctl.recipe import resolve

    recipe = resolve(ROOT / "recipes", "tiny")
    return GemModel.build(recipe.model, corpus=["a tiny corpus for the tokenizer of the benchmark"] * 8,
                          seed=recipe.seed)


def make_batch(model: GemModel, shapes: Shapes, device: torch.device, seed: int = 0, packed: bool = False) -> dict:
    """Token ids, labels, pixels and depth targets as GemProcessor lays them out (one image per sample):
    prompt, <|vision_start|>, image pads, <|vision_end|>, answer, right-padded to the longest sample; packed: as
    GemProcessor.pack, the samples back to back in one sequence with their boundaries in cu_seqlens and no mask."""
    g = torch.Generator().manual_seed(seed)
    c, vision = model.backbone.config, model.backbone.config.vision_config
    special = torch.tensor([c.vision_start_token_id, c.vision_end_token_id, c.image_token_id, c.video_token_id])
    prompt = shapes.text - shapes.answer
    patch_values = 3 * vision.temporal_patch_size * vision.patch_size**2
    rows, grids = [], []
    for one in shapes.samples():
        text = torch.randint(0, c.text_config.vocab_size, (shapes.text,), generator=g)
        text[torch.isin(text, special)] = 0
        rows.append(torch.cat([text[:prompt], torch.tensor([c.vision_start_token_id]),
                               torch.full((one.image_tokens(vision),), c.image_token_id),
                               torch.tensor([c.vision_end_token_id]), text[prompt:]]))
        grids.append([1, *one.grid(vision.patch_size)])
    lengths = [len(r) for r in rows]
    if packed:  # every sample starts with prompt text (label -100): no target crosses a boundary
        ids, mask = torch.cat(rows)[None], None
    else:
        ids = torch.zeros(len(rows), max(lengths), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r)], mask[i, :len(r)] = r, 1
    labels = torch.full_like(ids, IGNORE_INDEX)
    ends = torch.tensor(lengths).cumsum(0) if packed else torch.tensor(lengths)
    for i, end in enumerate(ends.tolist()):
        row = 0 if packed else i
        labels[row, end - shapes.answer:end] = ids[row, end - shapes.answer:end]
    batch = {
        "input_ids": ids,
        "labels": labels,
        "mm_token_type_ids": (ids == c.image_token_id).int(),
        "pixel_values": torch.randn(sum(h * w for _, h, w in grids), patch_values, generator=g),
        "image_grid_thw": torch.tensor(grids),
        "depth_image_index": torch.arange(shapes.batch),
    }
    if packed:
        batch["cu_seqlens"] = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
    else:
        batch["attention_mask"] = mask
    batch = {k: v.to(device) for k, v in batch.items()}
    batch["depth_pixel_values"] = [(torch.rand(3, *shapes.depth, generator=g) * 2 - 1).to(device)
                                   for _ in range(shapes.batch)]
    return batch


# ----- the step -----

def measure(model: GemModel, shapes: Shapes, optimizer, params, device: torch.device, warmup: int, steps: int,
            bf16: bool, packed: bool = False) -> dict:
    """Mean seconds per step over `steps` after `warmup` steps, the peak memory of the timed steps, and on CUDA the
    GPU time of each phase (forward + backward, clipping, optimiser), from events that need no sync between them."""
    batch = make_batch(model, shapes, device, packed=packed)
    weights = {"lm": 1.0, "depth": 0.1, "action": 0.0}  # the recipe's stage-3 loss
    cuda = device.type == "cuda"
    events = []

    def mark(marks: list) -> None:
        if cuda:
            marks.append(torch.cuda.Event(enable_timing=True))
            marks[-1].record()

    def step(i: int) -> None:
        marks = []
        generator = torch.Generator(device=device).manual_seed(i)
        mark(marks)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(batch, weights=weights, generator=generator)
        out["loss"].backward()
        mark(marks)
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # the stage default max_grad_norm
        mark(marks)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mark(marks)
        events.append(marks)

    for i in range(warmup):
        step(i)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    events.clear()
    start = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    phases = {}
    if cuda:
        for k, name in enumerate(("forward+backward", "clip", "optimizer")):
            phases[name] = sum(m[k].elapsed_time(m[k + 1]) for m in events) / 1e3 / steps
    return {"seconds": seconds, "peak_bytes": peak, "phases": phases}


@torch.no_grad()
def packed_vs_padded(model: GemModel, shapes: Shapes, device: torch.device, bf16: bool) -> dict[str, tuple]:
    """Each loss part of one batch padded and packed, same draws: (padded, packed). They agree up to the
    precision's rounding (exactly in fp32: tests/models/test_packing.py); a gap means attention crossed samples."""
    out = {}
    for packed in (False, True):
        batch = make_batch(model, shapes, device, packed=packed)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            parts = model(batch, {"lm": 1.0, "depth": 0.1}, torch.Generator(device=device).manual_seed(0))
        out[packed] = {k: float(parts[k]) for k in ("lm", "depth")}
    return {k: (out[False][k], out[True][k]) for k in out[False]}


def kernel_time_by_kind(prof) -> dict[str, float]:
    """Seconds of GPU kernel time in one profiled step, by kind of kernel (from the kernel names)."""
    # First match wins: cuDNN's attention and convolution kernels are named after the GEMMs they are built on.
    kinds = {"attention": ("sdpa", "flash", "fmha"),
             "convolution": ("conv", "nhwc", "nchw", "cudnn", "implicit_gemm", "dgrad", "wgrad"),
             "matmul": ("nvjet", "gemm", "cutlass", "xmma", "cublas"), "optimizer": ("multi_tensor", "fused_adam"),
             "memcpy": ("memcpy", "memset")}
    out = collections.Counter()
    for e in prof.key_averages():
        if e.device_type != torch.autograd.DeviceType.CUDA or e.self_device_time_total <= 0:
            continue
        name = e.key.lower()
        kind = next((k for k, words in kinds.items() if any(w in name for w in words)), "elementwise and reductions")
        out[kind] += e.self_device_time_total / 1e6
    return dict(out.most_common())


def parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    return int(h), int(w)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="recipes/tiny.yaml's model on the CPU, at tiny shapes")
    p.add_argument("--batch", type=int, nargs="+", default=None,
                   help="samples per step; several values are measured in turn (default 1 4 8; tiny: 2)")
    p.add_argument("--image", type=parse_size, default=None, help="backbone image HxW (default 896x672; tiny 64x64)")
    p.add_argument("--depth", type=parse_size, default=None, help="depth target HxW (default 448x320; tiny 64x64)")
    p.add_argument("--mixed", type=parse_size, nargs="+", default=(),
                   help="image sizes HxW the samples take in turn, instead of --image (variable sizes: what packing "
                        "is for; a padded batch pads every sample to the longest)")
    p.add_argument("--text", type=int, default=None, help="text tokens per sample (default 512; tiny 32)")
    p.add_argument("--answer", type=int, default=None, help="answer tokens among them (default 256; tiny 8)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, if not in the table")
    p.add_argument("--weights", choices=["fp32", "bf16"], default="fp32",
                   help="fp32 master weights under bf16 autocast (the trainer's), or bf16 weights without autocast "
                        "(a what-if: no casts, half the optimiser traffic)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each LLM, ViT and DiT block, as runtime.compile_blocks: true")
    p.add_argument("--packed", action="store_true",
                   help="the step's samples packed into one sequence (stages.<s>.packing: the release's data_flatten) "
                        "instead of a padded batch, attending sample by sample as the stage does (sdpa_packed); "
                        "the FLOPs counted stay each sample's own")
    p.add_argument("--packed-mask", action="store_true",
                   help="with --packed: attention through transformers' [T, T] block-diagonal mask instead (plain "
                        "SDPA, what packing costs without sdpa_packed or flash-attention)")
    p.add_argument("--packed-loop", action="store_true",
                   help="with --packed: sdpa_packed without torch's varlen kernel, one SDPA call per sample")
    p.add_argument("--profile", type=Path, default=None, help="write the top kernels of one step here")
    args = p.parse_args()

    from gem_stages.trainer import set_trainable

    if args.tiny:
        device, bf16 = torch.device("cpu"), False
        torch.set_num_threads(1)
        model = tiny_model()
        defaults = dict(batch=[2], image=(64, 64), depth=(64, 64), text=32, answer=8)
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run on a GPU, or pass --tiny")
        device, bf16 = torch.device("cuda"), True
        # The trainer leaves TF32 off; on here, as in the measurements of bench/README.md. Under bf16 autocast it
        # reaches only the matmuls done in fp32 on purpose (SANA's linear attention): a small share of the step.
        torch.backends.cuda.matmul.allow_tf32 = True
        model = paper_model(device)
        defaults = dict(batch=[1, 4, 8], image=(896, 672), depth=(448, 320), text=512, answer=256)
    settings = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in defaults.items()}
    if args.weights == "bf16":  # not what the trainer does: the ceiling without fp32 master weights and casts
        model.to(torch.bfloat16)
        bf16 = False
    model.to(device).train()
    if args.compile:  # runtime.compile_blocks: true
        model.compile_blocks()
    model.enable_gradient_checkpointing()  # runtime.gradient_checkpointing: true in gem-2b
    if args.packed:
        from gem_models import packed_attention

        if not args.packed_mask:
            model.enable_packed_attention()  # as train_stage does for stages.<s>.packing
        if args.packed_loop:
            packed_attention.varlen_attn = None
        kernel = ("[T, T] mask" if args.packed_mask else "SDPA per sample"
                  if packed_attention.varlen_attn is None or device.type != "cuda" else "varlen_attn")
        print(f"packed attention: {kernel}")
    trainable = ["merger", "deepstack_merger", "language", "connector", "depth_generator"]  # gem-2b stage3
    set_trainable(model, model.module_groups(), trainable)
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)  # as the trainer's

    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next(
        (v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)
    n_params = sum(q.numel() for q in model.parameters())
    print(f"device {name}; peak bf16 {peak / 1e12 if peak else float('nan'):.1f} TFLOP/s; torch {torch.__version__}; "
          f"{n_params / 1e9:.3f} B parameters, {sum(q.numel() for q in params) / 1e9:.3f} B trainable")
    measured = None  # the largest shapes that fit: the profiled ones
    for batch in settings["batch"]:
        shapes = Shapes(batch, settings["image"], settings["text"], settings["answer"], settings["depth"],
                        tuple(args.mixed))
        flops = step_flops({"backbone": model.backbone, "connector": model.connector,
                            "depth_generator": model.depth_generator}, shapes)
        total = sum(flops.values())
        try:
            r = measure(model, shapes, optimizer, params, device, args.warmup, args.steps, bf16, args.packed)
        except torch.OutOfMemoryError:
            optimizer.zero_grad(set_to_none=True)
            print(f"batch {batch}: out of memory on this card")
            break
        measured = shapes
        if args.packed:
            check = packed_vs_padded(model, shapes, device, bf16)
            print("  loss padded / packed: " + ", ".join(f"{k} {a:.5f} / {b:.5f}" for k, (a, b) in check.items()))
        vision = model.backbone.config.vision_config
        seqs = [one.sequence(vision) for one in shapes.samples()]
        tokens = sum(seqs)  # the samples' own tokens: padding is not counted
        mfu = f"{100 * total / r['seconds'] / peak:.1f}%" if peak else "n/a"
        layout = (f"packed into one sequence ({model.backbone.config.text_config._attn_implementation})"
                  if args.packed else f"padded to {max(seqs)} ({100 * (1 - tokens / (batch * max(seqs))):.0f}% padding)")
        images = " ".join(f"{h}x{w}" for h, w in shapes.mixed) if shapes.mixed else "x".join(map(str, shapes.image))
        print(f"batch {batch}, {tokens} tokens {layout}, image {images}, depth "
              f"{shapes.depth[0]}x{shapes.depth[1]}: {r['seconds'] * 1e3:.1f} ms/step, "
              f"{tokens / r['seconds']:.0f} tokens/s, {batch / r['seconds']:.2f} images/s, "
              f"peak memory {r['peak_bytes'] / 2**30:.1f} GiB, {total / 1e12:.2f} TFLOP/step "
              f"({total / r['seconds'] / 1e12:.1f} TFLOP/s), MFU {mfu}")
        print("  FLOPs by part: " + ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in flops.items()))
        if r["phases"]:
            print("  GPU time by phase: " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in r["phases"].items()))
    if args.profile is not None and measured is not None:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            measure(model, measured, optimizer, params, device, 0, 1, bf16, args.packed)
        key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        args.profile.write_text(prof.key_averages().table(sort_by=key, row_limit=60))
        if device.type == "cuda":
            kinds = kernel_time_by_kind(prof)
            busy = sum(kinds.values())
            print(f"kernel time of one profiled step at batch {measured.batch}: {busy * 1e3:.0f} ms, "
                  + ", ".join(f"{k} {100 * v / busy:.0f}%" for k, v in kinds.items()))


if __name__ == "__main__":
    main()
