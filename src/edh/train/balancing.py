"""How the losses of several heads become one: fixed weights, or learned uncertainty weighting."""

from __future__ import annotations

import torch
from torch import nn


class FixedWeighting(nn.Module):
    """``sum_i w_i * L_i`` with each head's ``weight`` from the spec."""

    def __init__(self, weights: dict[str, float]) -> None:
        super().__init__()
        self.weights = dict(weights)

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.weights[name] * loss for name, loss in losses.items())

    def current(self) -> dict[str, float]:
        return dict(self.weights)


class UncertaintyWeighting(nn.Module):
    """Homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018).

    Each head ``i`` learns ``s_i = log sigma_i^2``; the total is ``sum_i w_i * (exp(-s_i) L_i + s_i)``
    (the 1/2 factors folded into the learning rate), so a noisy task down-weights itself while the
    ``+ s_i`` term keeps every weight from collapsing to zero. ``w_i`` is the spec's fixed weight.
    """

    def __init__(self, weights: dict[str, float]) -> None:
        super().__init__()
        self.weights = dict(weights)
        self.log_vars = nn.ParameterDict({name: nn.Parameter(torch.zeros(())) for name in weights})

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        total = 0.0
        for name, loss in losses.items():
            s = self.log_vars[name]
            total = total + self.weights[name] * (torch.exp(-s) * loss + s)
        return total

    def current(self) -> dict[str, float]:
        return {name: self.weights[name] * float(torch.exp(-s.detach())) for name, s in self.log_vars.items()}


def make_balancing(method: str, weights: dict[str, float]) -> nn.Module:
    if method == "uncertainty":
        return UncertaintyWeighting(weights)
    if method == "fixed":
        return FixedWeighting(weights)
    raise ValueError(f"train.loss_balancing must be 'fixed' or 'uncertainty', got {method!r}")
