"""The [SEG] projection head: LLM hidden size -> SAM prompt space (upstream ``text_hidden_fcs``)."""

from __future__ import annotations

from torch import Tensor, nn


class SegProjection(nn.Module):
    """Linear(D, D), ReLU, Linear(D, projection_dim): turns a [SEG] query into a SAM sparse token."""

    def __init__(self, *, hidden_size: int, projection_dim: int) -> None:
        """
        Arguments:
          hidden_size (int): D, the language model's hidden size (the [SEG] query's width).
          projection_dim (int): the SAM prompt embedding width (`sam.prompt_embed_dim`).
        """
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, projection_dim),
        )

    def forward(self, query: Tensor) -> Tensor:
        """[..., D] queries -> [..., projection_dim] SAM sparse prompt tokens."""
        return self.layers(query)
