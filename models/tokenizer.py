"""Tokenizers: Qwen's own (pretrained) or a tiny byte-level BPE trained offline on a corpus (random init).

The tiny tokenizer uses Qwen2's normaliser (NFC), pre-tokeniser regex and byte-level alphabet, so any text
encodes without unknown tokens, and it is wrapped in transformers' `Qwen2Tokenizer` so everything downstream
(chat layout, save_pretrained/from_pretrained, AutoTokenizer) treats it exactly like the real one.
"""

import json
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen2Tokenizer
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

# Qwen's special tokens, in the order they get ids 0..6 in the tiny vocabulary.
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Used when no corpus is given: enough text for a few hundred merges of the words GEM-style data uses.
DEFAULT_CORPUS = [
    "What is the distance between the red cube and the blue bowl in meters?",
    "The mug is to the left of the plate, about 0.4 meters away.",
    "Pick up the black bowl next to the cookie box and place it on the plate.",
    "How many chairs are in the room? Answer with a single number.",
    "Is the cabinet closer to the camera than the table? Yes or no.",
    "Point to the free space where the cup can be placed: (0.52, 0.31).",
    "Open the top drawer of the cabinet, then put the ketchup in the basket.",
    "The depth of the scene increases from the bottom to the top of the image.",
    "A: left, B: right, C: above, D: below. The answer is B.",
    "0 1 2 3 4 5 6 7 8 9 10 20 50 100 0.1 0.25 1.5 meters centimeters",
]


def train_tiny_tokenizer(corpus: Iterable[str] | None, vocab_size: int) -> Qwen2Tokenizer:
    """Byte-level BPE with Qwen's special tokens at ids 0..6; deterministic for a given corpus and order."""
    texts = list(corpus) if corpus is not None else list(DEFAULT_CORPUS)
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=QWEN_SPECIAL_TOKENS,
        # The full 256-symbol byte alphabet, so text outside the corpus never needs an unknown token.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    vocab = bpe.get_vocab()
    merges = [tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
    # Instruct-model conventions: a turn ends with <|im_end|>, padding uses <|endoftext|>.
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=QWEN_SPECIAL_TOKENS[1:],
    )


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """A saved tiny tokenizer or a real Qwen-VL tokenizer (local dir or hub id)."""
    tok = AutoTokenizer.from_pretrained(path)
    # <|endoftext|> doubles as unk in Qwen2Tokenizer, so only the chat/vision tokens are checked.
    missing = [
        t for t in QWEN_SPECIAL_TOKENS[1:6] if tok.convert_tokens_to_ids(t) in (None, tok.unk_token_id)
    ]
    if missing:
        raise ValueError(f"tokenizer at {path} lacks Qwen special tokens {missing}")
    return tok
