"""Action/state normalisation with the statistics stored as buffers, so they save and load with the weights.

Both modes reduce to x_norm = (x - loc) / scale - shift:
  mean_std: actions and states: loc = mean, scale = std, shift 0 (zero-mean, unit-variance); a dimension with
            (near) zero spread gets scale 1, so a constant dimension (e.g. an unused gripper) stays finite.
  min_max:  the released GEM-VLA (train/dataset.py): actions (a - min) / max(max - min, 1e-3) * 2 - 1, i.e.
            loc = min, scale = R / 2, shift 1 with R the range floored at 1e-3 (a constant dimension maps to -1;
            loc = min rather than the midpoint keeps that exact in float32); states stay raw (loc 0, scale 1).
"""

import torch
from torch import Tensor, nn

MIN_SCALE = 1e-6
MIN_RANGE = 1e-3  # the release's floor on max - min


class ActionNormalizer(nn.Module):
    def __init__(self, action_dim: int, state_dim: int, mode: str = "mean_std"):
        super().__init__()
        if mode not in ("mean_std", "min_max"):
            raise ValueError(f"unknown normalisation {mode!r}")
        self.mode = mode
        self.action_shift = 1.0 if mode == "min_max" else 0.0
        # Identity until set_stats is called.
        self.register_buffer("action_loc", torch.zeros(action_dim))
        self.register_buffer("action_scale", torch.ones(action_dim))
        self.register_buffer("state_loc", torch.zeros(state_dim))
        self.register_buffer("state_scale", torch.ones(state_dim))

    def _from_moments(self, d: dict[str, Tensor], name: str) -> tuple[Tensor, Tensor]:
        """loc, scale of `name` ("action" | "state") from float64 per-dimension mean/std/min/max."""
        if self.mode == "min_max":
            if name == "state":  # raw, as the release feeds them
                return torch.zeros_like(d["min"]), torch.ones_like(d["min"])
            return d["min"], torch.clamp(d["max"] - d["min"], min=MIN_RANGE) / 2
        scale = torch.where(d["std"] < MIN_SCALE, torch.ones_like(d["std"]), d["std"])
        return d["mean"], scale

    @torch.no_grad()
    def set_stats(self, actions: Tensor, states: Tensor) -> None:
        """Compute the statistics from data: actions [..., action_dim], states [..., state_dim]."""
        for name, x in (("action", actions), ("state", states)):
            x = torch.as_tensor(x).reshape(-1, torch.as_tensor(x).shape[-1]).double()
            d = {"mean": x.mean(0), "std": x.std(0, unbiased=False), "min": x.min(0).values, "max": x.max(0).values}
            loc, scale = self._from_moments(d, name)
            getattr(self, f"{name}_loc").copy_(loc.float())
            getattr(self, f"{name}_scale").copy_(scale.float())

    @torch.no_grad()
    def set_from_statistics(self, stats: dict) -> None:
        """From precomputed per-dimension lists: {"action": {"mean", "std", "min", "max"}, "state": {...}}."""
        for name in ("action", "state"):
            d = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in stats[name].items()}
            loc, scale = self._from_moments(d, name)
            if loc.shape != getattr(self, f"{name}_loc").shape:
                raise ValueError(
                    f"{name} statistics have {loc.numel()} dims, the model has "
                    f"{getattr(self, f'{name}_loc').numel()}"
                )
            getattr(self, f"{name}_loc").copy_(loc.float())
            getattr(self, f"{name}_scale").copy_(scale.float())

    def normalize_actions(self, a: Tensor) -> Tensor:
        return (a - self.action_loc) / self.action_scale - self.action_shift

    def unnormalize_actions(self, a: Tensor) -> Tensor:
        return (a + self.action_shift) * self.action_scale + self.action_loc

    def normalize_state(self, s: Tensor) -> Tensor:
        return (s - self.state_loc) / self.state_scale
