"""QwenVLImageProcessor: the Qwen-VL processor without its video half, saved with every checkpoint's backbone so
that transformers alone loads it where torchvision is absent:

    AutoProcessor.from_pretrained("<checkpoint>/backbone", trust_remote_code=True)

transformers' own Qwen2.5-VL / Qwen3-VL processors always load a video processor, and every video processor needs
torchvision. This one has the image processor (transformers' PIL backend loads without torchvision) and the
tokenizer only, and expands each <|image_pad|> as Qwen-VL does (t*h*w / merge^2 tokens per image), with
mm_token_type_ids for M-RoPE.

This file is copied into each checkpoint and imported there by transformers: it imports transformers only.
"""

from transformers.processing_utils import ProcessorMixin

# The chat layout the model was trained with (GemProcessor's): no default system turn, each image as
# <|vision_start|><|image_pad|><|vision_end|>. Used when the tokenizer brings no template of its own.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class QwenVLImageProcessor(ProcessorMixin):
    return_mm_token_type_ids = True  # Qwen3-VL's M-RoPE needs to know which tokens are image tokens

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = "<|image_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        merge = self.image_processor.merge_size**2
        return self.image_token * (int(image_inputs["image_grid_thw"][image_idx].prod()) // merge)


# auto_map in the saved processor_config.json: AutoProcessor finds this class in the checkpoint's copy of this file
QwenVLImageProcessor.register_for_auto_class("AutoProcessor")
