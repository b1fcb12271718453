"""Action/state normalisation with the statistics stored as buffers, so they save and load with the weights.

Both modes reduce to x_norm = (x - loc) / scale:
  mean_std: loc = mean, scale = std                      (zero-mean, unit-variance)
  min_max:  loc = (max + min) / 2, scale = (max - min) / 2 (maps [min, max] to [-1, 1])
Dimensions with (near) zero spread get scale 1, so a constant dimension (e.g. an unused gripper) stays finite.
"""

import torch
from torch import Tensor, nn

MIN_SCALE = 1e-6


class ActionNormalizer(nn.Module):
    def __init__(self, action_dim: int, state_dim: int, mode: str = "mean_std"):
        super().__init__()
        if mode not in ("mean_std", "min_max"):
            raise ValueError(f"unknown normalisation {mode!r}")
        self.mode = mode
        # Identity until set_stats is called.
        self.register_buffer("action_loc", torch.zeros(action_dim))
        self.register_buffer("action_scale", torch.ones(action_dim))
        self.register_buffer("state_loc", torch.zeros(state_dim))
        self.register_buffer("state_scale", torch.ones(state_dim))

    def _loc_scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.reshape(-1, x.shape[-1]).double()
        if self.mode == "mean_std":
            loc, scale = x.mean(0), x.std(0, unbiased=False)
        else:
            lo, hi = x.min(0).values, x.max(0).values
            loc, scale = (hi + lo) / 2, (hi - lo) / 2
        scale = torch.where(scale < MIN_SCALE, torch.ones_like(scale), scale)
        return loc.float(), scale.float()

    @torch.no_grad()
    def set_stats(self, actions: Tensor, states: Tensor) -> None:
        """Compute the statistics from data: actions [..., action_dim], states [..., state_dim]."""
        for name, x in (("action", actions), ("state", states)):
            loc, scale = self._loc_scale(torch.as_tensor(x))
            getattr(self, f"{name}_loc").copy_(loc)
            getattr(self, f"{name}_scale").copy_(scale)

    @torch.no_grad()
    def set_from_statistics(self, stats: dict) -> None:
        """From precomputed per-dimension lists: {"action": {"mean", "std", "min", "max"}, "state": {...}}."""
        for name, key in (("action", "action"), ("state", "state")):
            d = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in stats[key].items()}
            if self.mode == "mean_std":
                loc, scale = d["mean"], d["std"]
            else:
                loc, scale = (d["max"] + d["min"]) / 2, (d["max"] - d["min"]) / 2
            if loc.shape != getattr(self, f"{name}_loc").shape:
                raise ValueError(
                    f"{name} statistics have {loc.numel()} dims, the model has "
                    f"{getattr(self, f'{name}_loc').numel()}"
                )
            scale = torch.where(scale < MIN_SCALE, torch.ones_like(scale), scale)
            getattr(self, f"{name}_loc").copy_(loc.float())
            getattr(self, f"{name}_scale").copy_(scale.float())

    def normalize_actions(self, a: Tensor) -> Tensor:
        return (a - self.action_loc) / self.action_scale

    def unnormalize_actions(self, a: Tensor) -> Tensor:
        return a * self.action_scale + self.action_loc

    def normalize_state(self, s: Tensor) -> Tensor:
        return (s - self.state_loc) / self.state_scale
