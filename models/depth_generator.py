"""Depth generator: a SANA DiT, conditioned on connector outputs, trained with rectified flow on depth images.

The condition enters as the backbone's gathered image states plus the connector that maps them into the DiT's
caption space. Classifier-free guidance zeroes the states BEFORE the connector (the release's
`diffusion_connector(mask_drop(hidden))`), so the unconditional condition is connector(0), a learned vector, in
training and in sampling alike.

latent space (paper): frozen DC-AE; latents = (vae.encode(x).latent - shift) * scale.
pixel space (tiny models): the DiT works on the [-1, 1] RGB depth image directly.

Randomness: every draw comes from the `generator` argument, image by image in batch order (u, dropout, noise
for image 0, then image 1, ...). A batch therefore consumes exactly the draws its images would consume one by
one, so batched and per-sample losses agree, and a run resumed with the generator's saved state is exact.
"""

import os
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaTransformer2DModel
from torch import Tensor, nn

from .config import DepthGeneratorConfig


def split_ref(ref: str) -> tuple[str, str | None]:
    """ "repo_or_dir::subfolder" -> (repo_or_dir, subfolder); no "::" -> (ref, None). "~/x" is a folder in the
    user's home (diffusers would take it for a hub id)."""
    repo, sep, sub = ref.partition("::")
    return os.path.expanduser(repo), (sub or None) if sep else None


def _group_by_shape(tensors: list[Tensor]) -> dict[tuple, list[int]]:
    groups = defaultdict(list)
    for i, t in enumerate(tensors):
        groups[tuple(t.shape)].append(i)
    return groups


class DepthGenerator(nn.Module):
    def __init__(
        self, cfg: DepthGeneratorConfig, transformer: SanaTransformer2DModel, vae: AutoencoderDC | None
    ):
        super().__init__()
        self.cfg = cfg
        self.transformer = transformer
        self.vae = vae
        if vae is not None:
            vae.requires_grad_(False)  # always frozen
            vae.eval()
            vae.enable_slicing()  # encode/decode one image at a time: bounded memory at 448 px
        # The scheduler's training table: timesteps[i] and sigmas[i] for i in [0, num_train_timesteps).
        sched = self.make_scheduler()
        self._train_timesteps = sched.timesteps.clone().float()
        self._train_sigmas = sched.sigmas.clone().float()
        self._validate()

    # ----- construction -----
    @classmethod
    def build(cls, cfg: DepthGeneratorConfig, caption_channels: int, seed: int = 0) -> "DepthGenerator":
        """Pretrained parts via diffusers from_pretrained ("repo::subfolder" allowed), others random init."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = None
            if cfg.space == "latent":
                if cfg.pretrained_vae is not None:
                    repo, sub = split_ref(cfg.pretrained_vae)
                    vae = AutoencoderDC.from_pretrained(repo, subfolder=sub, torch_dtype=torch.float32)
                else:
                    n = len(cfg.vae_block_out_channels)
                    vae = AutoencoderDC(
                        in_channels=3,
                        latent_channels=cfg.vae_latent_channels,
                        attention_head_dim=8,
                        encoder_block_types="ResBlock",
                        decoder_block_types="ResBlock",
                        encoder_block_out_channels=tuple(cfg.vae_block_out_channels),
                        decoder_block_out_channels=tuple(cfg.vae_block_out_channels),
                        encoder_layers_per_block=(1,) * n,
                        decoder_layers_per_block=(1,) * n,
                        encoder_qkv_multiscales=((),) * n,
                        decoder_qkv_multiscales=((),) * n,
                        scaling_factor=1.0,
                    )
            if cfg.pretrained_transformer is not None:
                repo, sub = split_ref(cfg.pretrained_transformer)
                transformer = SanaTransformer2DModel.from_pretrained(
                    repo, subfolder=sub, torch_dtype=torch.float32
                )
            else:
                channels = vae.config.latent_channels if vae is not None else 3
                inner = cfg.num_heads * cfg.head_dim
                transformer = SanaTransformer2DModel(
                    in_channels=channels,
                    out_channels=channels,
                    num_attention_heads=cfg.num_heads,
                    attention_head_dim=cfg.head_dim,
                    num_layers=cfg.num_layers,
                    num_cross_attention_heads=cfg.cross_heads,
                    cross_attention_head_dim=cfg.cross_head_dim,
                    cross_attention_dim=inner,
                    caption_channels=caption_channels,
                    mlp_ratio=cfg.mlp_ratio,
                    sample_size=cfg.image_long_side // cfg.multiple_of,
                    patch_size=cfg.patch_size,
                )
        if transformer.config.caption_channels != caption_channels:
            raise ValueError(
                f"DiT caption_channels {transformer.config.caption_channels} != "
                f"connector width {caption_channels}"
            )
        return cls(cfg, transformer, vae)

    @classmethod
    def load(cls, directory: str, cfg: DepthGeneratorConfig) -> "DepthGenerator":
        transformer = SanaTransformer2DModel.from_pretrained(
            os.path.join(directory, "transformer"), torch_dtype=torch.float32
        )
        vae = None
        if cfg.space == "latent":
            vae = AutoencoderDC.from_pretrained(os.path.join(directory, "vae"), torch_dtype=torch.float32)
        return cls(cfg, transformer, vae)

    def save(self, directory: str) -> None:
        self.transformer.save_pretrained(os.path.join(directory, "transformer"))
        if self.vae is not None:
            self.vae.save_pretrained(os.path.join(directory, "vae"))

    def make_scheduler(self) -> FlowMatchEulerDiscreteScheduler:
        return FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=self.cfg.num_train_timesteps, shift=self.cfg.flow_shift
        )

    def _validate(self) -> None:
        step = self.spatial_factor * self.transformer.config.patch_size
        if self.cfg.multiple_of % step:
            raise ValueError(
                f"depth multiple_of {self.cfg.multiple_of} must be a multiple of "
                f"VAE factor x DiT patch = {step}"
            )
        if self.transformer.config.in_channels != self.latent_channels:
            raise ValueError(
                f"DiT in_channels {self.transformer.config.in_channels} != latent channels "
                f"{self.latent_channels}"
            )

    def train(self, mode: bool = True) -> "DepthGenerator":
        super().train(mode)
        if self.vae is not None:
            self.vae.eval()  # frozen: never in training mode
        return self

    # ----- latent space -----
    @property
    def spatial_factor(self) -> int:
        return self.vae.spatial_compression_ratio if self.vae is not None else 1

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels if self.vae is not None else 3

    def _shift_scale(self) -> tuple[float, float]:
        c = self.vae.config
        return float(getattr(c, "shift_factor", None) or 0.0), float(
            getattr(c, "scaling_factor", None) or 1.0
        )

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """[N, 3, h, w] in [-1, 1] -> latents (the images themselves in pixel space)."""
        if self.vae is None:
            return images
        shift, scale = self._shift_scale()
        return (self.vae.encode(images.to(self.vae.dtype)).latent.float() - shift) * scale

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        if self.vae is None:
            return latents
        shift, scale = self._shift_scale()
        return self.vae.decode((latents / scale + shift).to(self.vae.dtype)).sample.float()

    def _encode_all(self, images: list[Tensor]) -> list[Tensor]:
        out: list[Tensor | None] = [None] * len(images)
        for idx in _group_by_shape(images).values():  # one VAE call per target size
            latents = self.encode(torch.stack([images[i] for i in idx]).float())
            for j, i in enumerate(idx):
                out[i] = latents[j]
        return out

    def _dit(self, x: Tensor, timesteps: Tensor, cond: Tensor, mask: Tensor) -> Tensor:
        # Only as many condition positions as the longest image in this call: less work, same result.
        length = int(mask.sum(1).max())
        dtype = self.transformer.dtype
        return self.transformer(
            x.to(dtype),
            encoder_hidden_states=cond[:, :length].to(dtype),
            timestep=timesteps.to(x.device),
            encoder_attention_mask=mask[:, :length].to(dtype),
        ).sample.float()

    # ----- training -----
    def loss(
        self,
        targets: list[Tensor],
        states: Tensor,
        cond_mask: Tensor,
        generator: torch.Generator,
        connector: Callable[[Tensor], Tensor],
    ) -> tuple[Tensor, Tensor]:
        """Rectified-flow loss. targets: [3, h, w] in [-1, 1] each; states [N, L, H] (backbone width, zeros in
        padding); cond_mask [N, L]; connector: states -> the DiT's condition [N, L, C].

        Returns (mean over images, per-image losses [N]).
        """
        n_steps = self.cfg.num_train_timesteps
        latents = self._encode_all(targets)
        noise, t_index, keep = [], [], []
        dev = generator.device
        for lat in latents:  # fixed per-image draw order: u, dropout, noise
            u = torch.rand((), generator=generator, device=dev)
            drop = torch.rand((), generator=generator, device=dev)
            t_index.append(min(int(u * n_steps), n_steps - 1))  # index into the scheduler's table
            keep.append(bool(drop >= self.cfg.cfg_dropout))
            noise.append(torch.randn(lat.shape, generator=generator, device=dev).to(lat.device))
        # Classifier-free guidance dropout: a dropped image's states are zeroed before the connector.
        keep_mask = torch.tensor(keep, device=states.device, dtype=states.dtype)
        cond = connector(states * keep_mask.view(-1, 1, 1))
        per_image = cond.new_zeros(len(targets), dtype=torch.float32)
        for idx in _group_by_shape(latents).values():
            x = torch.stack([latents[i] for i in idx])
            eps = torch.stack([noise[i] for i in idx])
            ti = torch.tensor([t_index[i] for i in idx])
            timesteps = self._train_timesteps[ti].to(x.device)
            sigma = self._train_sigmas[ti].to(x.device).view(-1, 1, 1, 1)
            noisy = (1.0 - sigma) * x + sigma * eps
            target = eps - x
            pred = self._dit(noisy, timesteps, cond[idx], cond_mask[idx])
            losses = ((pred - target) ** 2).mean(dim=(1, 2, 3))  # uniform weighting, MSE per image
            per_image = per_image.index_put((torch.tensor(idx, device=per_image.device),), losses)
        return per_image.mean(), per_image

    # ----- sampling -----
    @torch.no_grad()
    def sample(
        self,
        states: Tensor,
        cond_mask: Tensor,
        sizes: list[tuple[int, int]],
        connector: Callable[[Tensor], Tensor],
        steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
    ) -> list[Tensor]:
        """Euler sampling with sigmas linspace(1, 1/steps) and CFG (unconditional = connector(0)).

        states [N, L, H] and connector as in `loss`; sizes: target (h, w) per image. Returns [3, h, w] in [0, 1].
        """
        steps = steps or self.cfg.sample_steps
        guidance_scale = self.cfg.guidance_scale if guidance_scale is None else guidance_scale
        f, c = self.spatial_factor, self.latent_channels
        cond = connector(states)
        null = connector(torch.zeros_like(states)) if guidance_scale != 1.0 else None
        gen_device = generator.device if generator is not None else torch.device("cpu")
        noise = [
            torch.randn((c, h // f, w // f), generator=generator, device=gen_device).to(cond.device)
            for h, w in sizes
        ]
        out: list[Tensor | None] = [None] * len(sizes)
        for idx in _group_by_shape(noise).values():
            x = torch.stack([noise[i] for i in idx])
            ci, mi = cond[idx], cond_mask[idx]
            ni = null[idx] if null is not None else None
            sched = self.make_scheduler()
            sched.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps).tolist(), device=x.device)
            for t in sched.timesteps:
                tt = t.expand(x.shape[0])
                if guidance_scale != 1.0:
                    both = self._dit(
                        torch.cat([x, x]),
                        torch.cat([tt, tt]),
                        torch.cat([ni, ci]),
                        torch.cat([mi, mi]),
                    )
                    uncond, condp = both.chunk(2)
                    v = uncond + guidance_scale * (condp - uncond)
                else:
                    v = self._dit(x, tt, ci, mi)
                x = sched.step(v, t, x, return_dict=False)[0]
            images = ((self.decode(x) + 1.0) / 2.0).clamp(0.0, 1.0)
            for j, i in enumerate(idx):
                out[i] = images[j]
        return out
