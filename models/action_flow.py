"""Flow-matching action expert: the released GEM-VLA RDT runner (GEM-VLA/models/rdt_runner.py).

The backbone's hidden_states[vlm_layers[i]] pass through ONE shared language adaptor (SiLU MLP, VLM width ->
expert width) and become expert block i's cross-attention context, with the prompt's padding masked out. The
noisy chunk and the state go through their own SiLU MLP adaptors; the network is RDT (action_rdt.py).

Flow convention (the release's, opposite to the depth generator's): x_t = t a + (1 - t) eps, so t = 1 is the
clean chunk; the network predicts v = a - eps from t in [0, 1] unscaled; t = sigmoid(N(mean, std))
(logit-normal; the release's LogisticNormal(0, 1)); MSE on normalised actions. Sampling integrates from pure
noise at t = 0 to t = 1 with `inference_steps` Euler steps x <- x + v / steps.
"""

import torch
from torch import Tensor, nn

from .action_layers import masked_mean
from .action_normalization import ActionNormalizer
from .action_rdt import RDT
from .config import ActionExpertConfig


def silu_mlp(in_features: int, out_features: int, depth: int) -> nn.Sequential:
    """The release's `mlp{depth}x_silu` adaptor: Linear(in, out), then (depth - 1) x [SiLU, Linear(out, out)]."""
    layers: list[nn.Module] = [nn.Linear(in_features, out_features)]
    for _ in range(depth - 1):
        layers += [nn.SiLU(), nn.Linear(out_features, out_features)]
    return nn.Sequential(*layers)


def resolve_vlm_layers(cfg: ActionExpertConfig, num_hidden_states: int) -> list[int]:
    """Backbone hidden_states index per expert layer; default i -> i, clipped to the deepest available."""
    layers = list(cfg.vlm_layers) or [min(i, num_hidden_states - 1) for i in range(cfg.num_layers)]
    if len(layers) != cfg.num_layers:
        raise ValueError(f"vlm_layers has {len(layers)} entries for {cfg.num_layers} expert layers")
    if any(not 0 <= i < num_hidden_states for i in layers):
        raise ValueError(
            f"vlm_layers {layers} out of range: the backbone has {num_hidden_states} hidden states"
        )
    return layers


class FlowActionExpert(nn.Module):
    def __init__(self, cfg: ActionExpertConfig, vlm_hidden_size: int, num_hidden_states: int):
        super().__init__()
        self.cfg = cfg
        self.vlm_layers = resolve_vlm_layers(cfg, num_hidden_states)
        h = cfg.hidden_size
        self.normalizer = ActionNormalizer(cfg.action_dim, cfg.state_dim, cfg.normalization)
        self.model = RDT(cfg)
        # Adaptors keep PyTorch's default init, as the release (they sit outside RDT's initialize_weights).
        self.lang_adaptor = silu_mlp(vlm_hidden_size, h, cfg.lang_adaptor_depth)
        self.act_adaptor = silu_mlp(cfg.action_dim, h, cfg.action_adaptor_depth)
        self.state_adaptor = silu_mlp(cfg.state_dim, h, cfg.state_adaptor_depth)

    def contexts(self, hidden_states: tuple[Tensor, ...]) -> list[Tensor]:
        dtype = self.lang_adaptor[0].weight.dtype
        return [self.lang_adaptor(hidden_states[i].to(dtype)) for i in self.vlm_layers]

    def velocity(self, x_t: Tensor, t: Tensor, state: Tensor, contexts: list[Tensor], mask: Tensor) -> Tensor:
        """Normalised noisy chunk [B, T, A], t [B], normalised state [B, S] -> predicted v [B, T, A]."""
        dtype = self.act_adaptor[0].weight.dtype
        return self.model(
            self.act_adaptor(x_t.to(dtype)), t, self.state_adaptor(state.to(dtype))[:, None], contexts, mask
        )

    def sample_timesteps(self, n: int, generator: torch.Generator | None) -> Tensor:
        """Training times, logit-normal: sigmoid(mean + std * z), z ~ N(0, 1)."""
        device = generator.device if generator is not None else "cpu"
        z = torch.randn(n, generator=generator, device=device)
        return torch.sigmoid(self.cfg.logit_normal_mean + self.cfg.logit_normal_std * z)

    def loss(
        self,
        hidden_states: tuple[Tensor, ...],
        attention_mask: Tensor,
        state: Tensor,
        actions: Tensor,
        generator: torch.Generator | None,
        action_mask: Tensor | None = None,
    ) -> Tensor:
        """Raw state [B, S] and action chunk [B, T, A] -> flow-matching MSE on the normalised chunk."""
        a = self.normalizer.normalize_actions(actions.float())
        s = self.normalizer.normalize_state(state.float())
        device = generator.device if generator is not None else "cpu"
        t = self.sample_timesteps(a.shape[0], generator).to(a.device)
        eps = torch.randn(a.shape, generator=generator, device=device).to(a.device)
        tt = t.view(-1, 1, 1)
        x_t = tt * a + (1.0 - tt) * eps
        v = self.velocity(x_t, t, s, self.contexts(hidden_states), attention_mask.bool())
        return masked_mean((v.float() - (a - eps)) ** 2, action_mask)

    @torch.no_grad()
    def predict(
        self,
        hidden_states: tuple[Tensor, ...],
        attention_mask: Tensor,
        state: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """-> raw (unnormalised) action chunk [B, T, A]."""
        b, steps = state.shape[0], self.cfg.inference_steps
        s = self.normalizer.normalize_state(state.float())
        contexts, mask = self.contexts(hidden_states), attention_mask.bool()
        device = generator.device if generator is not None else state.device
        x = torch.randn(b, self.cfg.chunk_size, self.cfg.action_dim, generator=generator, device=device).to(
            state.device
        )
        for k in range(steps):
            t = torch.full((b,), k / steps, device=x.device)
            x = x + self.velocity(x, t, s, contexts, mask).float() / steps
        return self.normalizer.unnormalize_actions(x)
