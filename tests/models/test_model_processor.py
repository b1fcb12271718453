import numpy as np
import pytest
import torch

from gem_models.config import BackboneConfig
from gem_models.processor import GemProcessor, batch_to, make_image_processor
from gem_models.tokenizer import QWEN_SPECIAL_TOKENS, train_tiny_tokenizer

CORPUS = [
    "How far is the cube? About 1.5 meters.",
    "compare the two views, which one shows the bowl closer",
] * 5


@pytest.fixture(scope="module")
def processor() -> GemProcessor:
    cfg = BackboneConfig(pretrained=None, min_pixels=32 * 32, max_pixels=64 * 64)
    return GemProcessor(
        train_tiny_tokenizer(CORPUS, 1024), make_image_processor(cfg), max_length=512, depth_long_side=64
    )


def test_tokenizer_is_deterministic_and_has_qwen_specials():
    a, b = train_tiny_tokenizer(CORPUS, 400), train_tiny_tokenizer(CORPUS, 400)
    assert a.get_vocab() == b.get_vocab()
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert a.convert_tokens_to_ids(QWEN_SPECIAL_TOKENS) == list(range(7))
    assert a.eos_token == "<|im_end|>" and a.pad_token == "<|endoftext|>"
    text = "Unseen text: ü, 漢字, 3.14159"  # byte-level: round-trips without unknown tokens
    assert a.decode(a(text)["input_ids"]) == text
    assert len(a) <= 400


def test_chat_layout_and_image_expansion(processor, sample_a):
    b = processor([sample_a()])
    text = processor.decode(b["input_ids"][0])
    pads = "<|image_pad|>" * 4  # 64x64 image, patch 16 -> 4x4 patches -> merge 2x2 -> 4 tokens
    assert text == (
        f"<|im_start|>user\n<|vision_start|>{pads}<|vision_end|>\nHow far is the cube?<|im_end|>\n"
        "<|im_start|>assistant\nAbout 1.5 meters.<|im_end|>\n"
    )
    assert b["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert b["pixel_values"].shape == (16, 3 * 2 * 16 * 16)
    assert torch.equal(b["mm_token_type_ids"][0], (b["input_ids"][0] == processor.image_pad_id).int())
    assert int(b["mm_token_type_ids"].sum()) == 4


def test_labels_cover_only_answers_and_im_end(processor, sample_a):
    s = sample_a()
    s["conversations"] += [
        {"from": "human", "value": "And the bowl?"},
        {"from": "gpt", "value": "Two meters."},
    ]
    b = processor([s])
    labels, ids = b["labels"][0], b["input_ids"][0]
    supervised = labels != -100
    assert torch.equal(labels[supervised], ids[supervised])
    assert processor.decode(ids[supervised]) == "About 1.5 meters.<|im_end|>Two meters.<|im_end|>"


def test_batch_of_two_samples(processor, sample_a, sample_b):
    b = processor([sample_a(), sample_b()])
    assert b["image_sample_index"].tolist() == [0, 1, 1]
    # Second image of sample b is 32x64 -> 2x4 patches -> 2 tokens.
    assert b["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 4], [1, 2, 4]]
    assert b["pixel_values"].shape[0] == 16 + 16 + 8
    assert [int(x) for x in b["mm_token_type_ids"].sum(1)] == [4, 6]
    # Right padding: the shorter sample ends in pad tokens with mask 0 and no labels.
    n_a = int(b["attention_mask"][0].sum())
    assert n_a < b["input_ids"].shape[1]
    assert b["attention_mask"][0, n_a:].sum() == 0 and (b["labels"][0, n_a:] == -100).all()
    assert (b["input_ids"][0, n_a:] == processor.pad_id).all()
    assert b["attention_mask"][1].all()
    # Depth targets: one per image, at the training size (long side 64, multiples of 32).
    assert b["depth_image_index"].tolist() == [0, 1, 2]
    assert [tuple(t.shape) for t in b["depth_pixel_values"]] == [(3, 64, 64), (3, 64, 64), (3, 32, 64)]
    assert b["depth_sizes"].tolist() == [[64, 64], [64, 64], [32, 64]]


def test_left_padding_for_generation(processor, image, sample_b):
    prompt = {"images": [image()], "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}]}
    b = processor([prompt, sample_b()], padding_side="left")
    assert b["attention_mask"][:, -1].all() and b["attention_mask"][0, 0] == 0
    text = processor.decode(b["input_ids"][0][b["attention_mask"][0].bool()])
    assert text.endswith("What is this?<|im_end|>\n<|im_start|>assistant\n")  # generation prompt appended
    assert (b["labels"][0] == -100).all()


def test_samples_without_depth_or_images(processor, sample_a):
    s = sample_a()
    s["depths"] = [None]
    text_only = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    b = processor([s, text_only])
    assert b["depth_image_index"].numel() == 0 and b["depth_pixel_values"] == []
    assert b["depth_sizes"].tolist() == [[64, 64]] and b["image_sample_index"].tolist() == [0]
    b = processor([text_only])
    assert "pixel_values" not in b and b["depth_sizes"].shape == (0, 2)


def test_missing_placeholder_puts_images_first(processor, sample_a):
    s = sample_a()
    s["conversations"][0]["value"] = "How far is the cube?"
    assert torch.equal(processor([s])["input_ids"], processor([sample_a()])["input_ids"])


def test_placeholder_count_mismatch_raises(processor, sample_a):
    s = sample_a()
    s["conversations"][0]["value"] = "<image><image> two?"
    with pytest.raises(ValueError, match="2 <image> placeholders"):
        processor([s])


def test_depth_of_another_size_is_resized_to_the_processed_image(processor, sample_a):
    """As the release: the depth map is nearest-resized to the processed image, whatever its own size. A 32x64 map
    (near top half 1 m, far bottom half 16 m) for a 64x64 image gives the 64x64 target of the same map at 64x64."""
    s, same = sample_a(), sample_a()
    top_bottom = np.where(np.arange(32)[:, None] < 16, 1.0, 16.0) * np.ones((32, 64))
    s["depths"] = [top_bottom]
    same["depths"] = [top_bottom.repeat(2, axis=0)]
    got, expected = processor([s])["depth_pixel_values"][0], processor([same])["depth_pixel_values"][0]
    assert got.shape == (3, 64, 64) and torch.equal(got, expected)
    assert not torch.equal(got[:, 0], got[:, 63])  # near top, far bottom


def test_depth_encoding_setting_and_persistence(processor, sample_a, tmp_path):
    vla = GemProcessor(
        processor.tokenizer, processor.image_processor, max_length=512, depth_long_side=32,
        depth_encoding="inferno_linear",
    )
    b = vla([sample_a(), sample_a()])
    assert [tuple(t.shape) for t in b["depth_pixel_values"]] == [(3, 32, 32)] * 2  # squares
    assert b["depth_sizes"].tolist() == [[32, 32]] * 2
    vla.save_pretrained(str(tmp_path))
    assert GemProcessor.from_pretrained(str(tmp_path)).depth_encoding == "inferno_linear"
    with pytest.raises(ValueError, match="unknown depth encoding 'jet'"):
        GemProcessor(processor.tokenizer, processor.image_processor, depth_encoding="jet")


def test_truncation_drops_whole_trailing_rounds(processor, image, depth, sample_a):
    s = {
        "images": [image(seed=1), image(seed=2)],
        "conversations": [
            {"from": "human", "value": "<image>\nHow far is the cube?"},
            {"from": "gpt", "value": "About 1.5 meters."},
            {"from": "human", "value": "<image>\nAnd now?"},
            {"from": "gpt", "value": "Closer."},
        ],
        "depths": [depth(seed=1), depth(seed=2)],
    }
    full = processor([s])
    first_round_len = len(processor([sample_a()])["input_ids"][0])
    assert full["input_ids"].shape[1] > first_round_len
    short = GemProcessor(
        processor.tokenizer, processor.image_processor, max_length=first_round_len + 3, depth_long_side=64
    )
    b = short([s])
    assert torch.equal(
        b["input_ids"], processor([sample_a()])["input_ids"]
    )  # second round and its image gone
    assert b["image_grid_thw"].shape[0] == 1 and len(b["depth_pixel_values"]) == 1
    tiny = GemProcessor(processor.tokenizer, processor.image_processor, max_length=8, depth_long_side=64)
    with pytest.raises(ValueError, match="max_length is 8"):
        tiny([s])


def test_save_and_load_round_trip(processor, tmp_path, sample_a, sample_b):
    processor.save_pretrained(tmp_path)
    again = GemProcessor.from_pretrained(str(tmp_path))
    a, b = processor([sample_a(), sample_b()]), again([sample_a(), sample_b()])
    for k in ("input_ids", "labels", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"):
        assert torch.equal(a[k], b[k]), k
    assert again.max_length == 512 and again.depth_long_side == 64


def test_batch_to_moves_lists_too(processor, sample_a):
    b = batch_to(processor([sample_a()]), "cpu")
    assert isinstance(b["depth_pixel_values"], list) and b["depth_pixel_values"][0].device.type == "cpu"
    assert np.isfinite(b["pixel_values"].numpy()).all()


def test_a_saved_checkpoint_loads_with_transformers_auto_classes_without_torchvision(qwen3_model, sample_a,
                                                                                     tmp_path):
    """What a user of a checkpoint does with transformers alone (this venv has no torchvision, so transformers' own
    Qwen-VL processor, which always loads a torchvision video processor, cannot load): AutoProcessor gives the
    image-only processor saved with the backbone, and it prepares exactly the inputs the model was trained on."""
    import importlib.util

    from transformers import AutoModelForImageTextToText, AutoProcessor

    assert importlib.util.find_spec("torchvision") is None  # the environment this test is about
    qwen3_model.save(str(tmp_path / "model"))
    backbone_dir = tmp_path / "model" / "backbone"
    processor = AutoProcessor.from_pretrained(backbone_dir, trust_remote_code=True)
    assert type(processor).__name__ == "QwenVLImageProcessor"

    sample = sample_a()
    sample["conversations"] = sample["conversations"][:1]  # a prompt: "<image>\nHow far is the cube?"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\nHow far is the cube?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    theirs = processor(text=[text], images=sample["images"], return_tensors="pt")
    ours = qwen3_model.processor([sample], padding_side="left")
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw"):
        assert torch.equal(theirs[key].long(), ours[key].long()), key
    assert torch.allclose(theirs["pixel_values"].float(), ours["pixel_values"])

    backbone = AutoModelForImageTextToText.from_pretrained(backbone_dir)
    out = backbone.generate(**theirs, max_new_tokens=4, do_sample=False, eos_token_id=qwen3_model.processor.im_end_id,
                            pad_token_id=qwen3_model.processor.pad_id)
    answer = processor.batch_decode(out[:, theirs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer == qwen3_model.generate(ours, max_new_tokens=4)
