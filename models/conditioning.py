"""Depth-generator condition: each image's visual-token states from the backbone's last layer.

For every image, the positions strictly between its <|vision_start|> and <|vision_end|> tokens (its
<|image_pad|> tokens), gathered into a padded [num_images, max_len, hidden] tensor with a bool mask. Images
are ordered as the processor orders them (sample by sample, left to right), which is also the order of
`image_grid_thw` and `image_sample_index`. Works for any batch size, padding side and images per sample.
"""

import torch
from torch import Tensor


def image_token_spans(
    input_ids: Tensor, vision_start_id: int, vision_end_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(sample index, first token position, token count) of every image, in processor order."""
    starts = (input_ids == vision_start_id).nonzero()  # row-major: sample by sample, left to right
    ends = (input_ids == vision_end_id).nonzero()
    if (
        starts.shape != ends.shape
        or not torch.equal(starts[:, 0], ends[:, 0])
        or bool((ends[:, 1] <= starts[:, 1]).any())
    ):
        raise ValueError("unbalanced <|vision_start|>/<|vision_end|> tokens in input_ids")
    return starts[:, 0], starts[:, 1] + 1, ends[:, 1] - starts[:, 1] - 1


def gather_image_tokens(
    hidden: Tensor, input_ids: Tensor, vision_start_id: int, vision_end_id: int
) -> tuple[Tensor, Tensor]:
    """hidden [B, L, H] -> (conditions [N, max_len, H] with zeros in padding, mask [N, max_len] bool)."""
    sample, first, count = image_token_spans(input_ids, vision_start_id, vision_end_id)
    if sample.numel() == 0:
        return hidden.new_zeros(0, 0, hidden.shape[-1]), torch.zeros(
            0, 0, dtype=torch.bool, device=hidden.device
        )
    max_len = int(count.max())
    offsets = torch.arange(max_len, device=hidden.device)
    mask = offsets[None, :] < count[:, None]
    # Clamp padded offsets to a valid position, then zero them: one vectorised gather for all images.
    positions = torch.where(mask, first[:, None] + offsets[None, :], first[:, None])
    cond = hidden[sample[:, None], positions] * mask[..., None].to(hidden.dtype)
    return cond, mask
