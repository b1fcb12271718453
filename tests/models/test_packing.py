"""Sequence packing: a micro-batch's samples flattened into one sequence (the release's data_flatten) trains exactly
as the padded batch of the same samples: same hidden states, same LM, depth and total loss, same gradients."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from gem_models.config import tiny_config
from gem_models.gem import GemModel
from gem_models.processor import IGNORE_INDEX

WEIGHTS = {"lm": 1.0, "depth": 0.1}  # stage 3
ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("gpu_step", ROOT / "bench" / "gpu_step.py")
gpu_step = sys.modules["gpu_step"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gpu_step)


@pytest.fixture(scope="module", params=["qwen3_vl", "qwen2_5_vl"])
def model(request) -> GemModel:
    return GemModel.build(tiny_config(request.param), seed=0)


@pytest.fixture
def samples(sample_a, sample_b):
    """Three lengths, one to two images of two sizes, one image without depth, one sample without any image."""
    text_only = {"conversations": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Red."}]}
    b = sample_b()
    b["depths"][1] = None
    return [sample_a(), b, text_only]


def test_packed_batch_is_the_samples_back_to_back(model, samples):
    padded, packed = model.processor(samples), model.processor.pack(samples)
    lengths = padded["attention_mask"].sum(1)
    assert packed["input_ids"].shape == (1, int(lengths.sum()))
    assert packed["cu_seqlens"].tolist() == [0, *lengths.cumsum(0).tolist()]
    assert "attention_mask" not in packed  # a mask would hide the sample boundaries from transformers
    assert torch.equal(packed["input_ids"][0], padded["input_ids"][padded["attention_mask"].bool()])
    assert torch.equal(packed["mm_token_type_ids"][0], padded["mm_token_type_ids"][padded["attention_mask"].bool()])
    # a sample's first token is never a target of the previous sample's last one
    assert (packed["labels"][0, packed["cu_seqlens"][:-1]] == IGNORE_INDEX).all()
    for key in ("pixel_values", "image_grid_thw", "image_sample_index", "depth_sizes", "depth_image_index"):
        assert torch.equal(packed[key], padded[key]), key
    assert all(torch.equal(x, y) for x, y in zip(packed["depth_pixel_values"], padded["depth_pixel_values"]))


def test_position_ids_restart_per_sample(model, samples):
    padded, packed = model.processor(samples), model.processor.pack(samples)
    mask = padded["attention_mask"].bool()
    rope, _ = model.backbone.model.get_rope_index(
        padded["input_ids"], padded["mm_token_type_ids"], image_grid_thw=padded["image_grid_thw"],
        attention_mask=padded["attention_mask"])
    positions = model.packed_position_ids(packed)
    assert positions.shape == (4, 1, packed["input_ids"].shape[1])
    text = torch.cat([torch.arange(int(n)) for n in mask.sum(1)])
    assert torch.equal(positions[0, 0], text)
    assert torch.equal(positions[1:, 0], rope[:, mask])
    # the images really move M-RoPE off the text positions, so the check above is not just arange == arange
    assert not torch.equal(positions[1, 0], text)


@pytest.mark.parametrize("attention", ["sdpa", "eager", "sdpa_packed"])  # flash-attention: bench/gpu_step --packed
def test_attention_does_not_cross_samples(model, samples, attention):
    padded, packed = model.processor(samples), model.processor.pack(samples)
    if attention == "sdpa_packed":
        model.enable_packed_attention()
        assert model.backbone.config.text_config._attn_implementation == "sdpa_packed"
        assert model.backbone.config.vision_config._attn_implementation == "sdpa"
    else:
        model.backbone.set_attn_implementation(attention)
    try:
        with torch.no_grad():
            ref = model.backbone_states(padded).last_hidden_state[padded["attention_mask"].bool()]
            ours = model.backbone_states(packed).last_hidden_state[0]
    finally:
        model.backbone.set_attn_implementation("sdpa")
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "sdpa_packed"])
def test_packed_loss_and_gradients_equal_the_padded_batch(model, samples, attention):
    def run(batch):
        if attention == "sdpa_packed" and "cu_seqlens" in batch:
            model.enable_packed_attention()
        else:
            model.backbone.set_attn_implementation("sdpa")
        model.zero_grad(set_to_none=True)
        out = model(batch, WEIGHTS, torch.Generator().manual_seed(7), per_image=True)
        out["loss"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out, grads

    ref, ref_grads = run(model.processor(samples))
    ours, our_grads = run(model.processor.pack(samples))
    assert set(ours) == set(ref) == {"loss", "lm", "depth", "depth_per_image"}
    assert ours["depth_per_image"].shape == (2,)  # sample_a's image and sample_b's first: the ones with depth
    for part in ("lm", "depth", "depth_per_image"):
        torch.testing.assert_close(ours[part], ref[part], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours["loss"].detach(), ref["loss"].detach(), rtol=1e-5, atol=1e-6)
    assert our_grads.keys() == ref_grads.keys()
    groups = model.module_groups()
    for name in ("vision", "merger", "language", "connector", "depth_generator"):  # every part got a gradient
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in groups[name].parameters()), name
    for n in ref_grads:
        torch.testing.assert_close(our_grads[n], ref_grads[n], rtol=1e-4, atol=1e-6, msg=n)
    model.zero_grad(set_to_none=True)
    model.backbone.set_attn_implementation("sdpa")


def test_packed_attention_is_sdpa_for_padded_batches_and_generation(image):
    """A model switched to sdpa_packed for a packing stage evaluates and generates as before (masks, the cache)."""
    model = GemModel.build(tiny_config("qwen3_vl"), seed=0)
    prompts = [{"images": [image(seed=s)], "conversations": [{"from": "human", "value": "<image>\n" + "Why? " * s}]}
               for s in (1, 4)]
    batch = model.processor(prompts, padding_side="left")
    with torch.no_grad():
        ref_states = model.backbone_states(batch).last_hidden_state
        ref_answers = model.generate(batch, max_new_tokens=6)
        model.enable_packed_attention()
        states = model.backbone_states(batch).last_hidden_state
        answers = model.generate(batch, max_new_tokens=6)
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(states[mask], ref_states[mask], rtol=1e-5, atol=1e-5)
    assert answers == ref_answers


@pytest.mark.gpu
def test_packed_attention_kernel_on_cuda_equals_per_sample_sdpa():
    """On a GPU, sdpa_packed runs torch's varlen flash kernel (where this torch has it): same output and gradients
    as SDPA over each sample alone, with grouped-query heads."""
    from gem_models.packed_attention import sdpa_packed_forward

    g = torch.Generator(device="cuda").manual_seed(0)
    lengths, heads, kv_heads, dim = [37, 200, 5, 64], 8, 2, 64
    total = sum(lengths)
    q = torch.randn(1, heads, total, dim, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
    k = torch.randn(1, kv_heads, total, dim, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
    v = torch.randn(1, kv_heads, total, dim, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
    positions = torch.cat([torch.arange(n) for n in lengths])[None].cuda()
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = True, heads // kv_heads
    out, _ = sdpa_packed_forward(module, q, k, v, None, scaling=dim**-0.5, position_ids=positions)
    out.float().square().sum().backward()
    ours = [out.detach(), q.grad, k.grad, v.grad]
    q.grad = k.grad = v.grad = None
    spans = torch.tensor([0, *lengths]).cumsum(0).tolist()
    ref = torch.cat([torch.nn.functional.scaled_dot_product_attention(
        q[:, :, a:b], k[:, :, a:b].repeat_interleave(4, 1), v[:, :, a:b].repeat_interleave(4, 1), is_causal=True,
        scale=dim**-0.5) for a, b in zip(spans, spans[1:])], dim=2).transpose(1, 2)
    ref.float().square().sum().backward()
    for mine, theirs in zip(ours, [ref.detach(), q.grad, k.grad, v.grad]):
        torch.testing.assert_close(mine.float(), theirs.float(), rtol=2e-2, atol=2e-2)



@pytest.mark.gpu
def test_packed_attention_kernel_takes_fp32_inputs_under_autocast():
    """The trainer keeps fp32 weights under bf16 autocast: the kernel (half precision only, and not autocast by
    torch) gets autocast's dtype, as SDPA does, and gives SDPA's result."""
    from gem_models.packed_attention import sdpa_packed_forward

    g = torch.Generator(device="cuda").manual_seed(1)
    lengths, heads, dim = [50, 9, 130], 4, 64
    q, k, v = (torch.randn(1, heads, sum(lengths), dim, device="cuda", generator=g) for _ in range(3))
    positions = torch.cat([torch.arange(n) for n in lengths])[None].cuda()
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = True, 1
    spans = torch.tensor([0, *lengths]).cumsum(0).tolist()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out, _ = sdpa_packed_forward(module, q, k, v, None, scaling=dim**-0.5, position_ids=positions)
        ref = torch.cat([torch.nn.functional.scaled_dot_product_attention(
            q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], is_causal=True, scale=dim**-0.5)
            for a, b in zip(spans, spans[1:])], dim=2).transpose(1, 2)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)

def test_packing_refuses_the_action_loss(sample_a):
    model = GemModel.build(tiny_config("qwen3_vl", action="flow"), seed=0)
    batch = model.processor.pack([sample_a(), sample_a()])
    batch["state"], batch["actions"] = torch.zeros(2, 8), torch.zeros(2, 8, 7)
    with pytest.raises(ValueError, match="packed"):
        model(batch, {"action": 1.0}, torch.Generator())


def test_gpu_step_packed_batch_gives_the_padded_losses():
    """bench/gpu_step.py --packed measures the step a packed stage takes: its packed batch is the padded one's."""
    model = GemModel.build(tiny_config("qwen3_vl"), seed=0)
    shapes = gpu_step.Shapes(batch=3, image=(64, 32), text=24, answer=6, depth=(64, 32),
                             mixed=((64, 64), (32, 32), (64, 32)))
    lengths = [one.sequence(model.backbone.config.vision_config) for one in shapes.samples()]
    assert lengths == [24 + 2 + 4, 24 + 2 + 1, 24 + 2 + 2]
    padded = gpu_step.make_batch(model, shapes, torch.device("cpu"))
    packed = gpu_step.make_batch(model, shapes, torch.device("cpu"), packed=True)
    assert padded["attention_mask"].sum(1).tolist() == lengths
    assert torch.equal(packed["input_ids"][0], padded["input_ids"][padded["attention_mask"].bool()])
    assert packed["cu_seqlens"].tolist() == [0, 30, 57, 85]
    assert (packed["labels"] != -100).sum() == (padded["labels"] != -100).sum() == 3 * 6
    check = gpu_step.packed_vs_padded(model, shapes, torch.device("cpu"), bf16=False)
    for part, (padded, ours) in check.items():
        assert ours == pytest.approx(padded, rel=1e-5), part
