"""Connector: backbone visual-token states (LLM width) -> the DiT's caption space (SANA: 2304)."""

from torch import Tensor, nn

from .config import ConnectorConfig


class Connector(nn.Module):
    """Linear(H -> W) -> GELU(tanh) -> Linear(W -> W) -> RMSNorm(W, eps, affine), as in the reference."""

    def __init__(self, in_features: int, cfg: ConnectorConfig):
        super().__init__()
        self.fc1 = nn.Linear(in_features, cfg.width)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(cfg.width, cfg.width)
        self.norm = nn.RMSNorm(cfg.width, eps=cfg.norm_eps, elementwise_affine=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.fc2(self.act(self.fc1(x))))
