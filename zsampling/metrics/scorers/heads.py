"""The MLP head shared by the LAION aesthetic predictor and ImageReward."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RewardMLP"]


class RewardMLP(nn.Module):
    """``improved-aesthetic-predictor``'s MLP (ImageReward reuses it).

    ``layers``: Linear(input_size, 1024), Dropout(0.2), Linear(1024, 128),
    Dropout(0.2), Linear(128, 64), Dropout(0.1), Linear(64, 16),
    Linear(16, 1) -- no activations (the ReLUs are commented out in both
    references), so in eval mode it is one affine map, stored as five. The
    state-dict keys are the references' (``layers.0.weight``, ...,
    ``layers.7.bias``).
    """

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, input_size) -> (B, 1)."""
        return self.layers(x)

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> RewardMLP:
        """A head with the input size of ``layers.0.weight``, loaded strictly.

        Raises:
            ValueError: keys or shapes that are not this MLP's.
        """
        if "layers.0.weight" not in state_dict:
            raise ValueError(f"not an aesthetic/ImageReward MLP state dict: keys {sorted(state_dict)[:8]}")
        head = cls(int(state_dict["layers.0.weight"].shape[1]))
        try:
            head.load_state_dict(state_dict, strict=True)
        except RuntimeError as error:
            raise ValueError(f"the MLP weights do not fit RewardMLP: {error}") from error
        return head.float().eval()
