"""What a data set is, as the rest of the application sees it, and its error type."""
from __future__ import annotations

from dataclasses import dataclass


class DataError(Exception):
    """A user mistake about data (missing, corrupt, unknown name); printed without traceback."""


@dataclass
class DataInfo:
    """A data set's shape: images (``in_channels`` × ``img_size``², ``num_classes`` classes,
    normalisation ``mean`` / ``std``), or text (``context`` > 0: token windows of that length over
    a vocabulary of ``num_classes`` tokens, targets the next token at every position)."""

    name: str
    num_classes: int
    in_channels: int
    img_size: int
    mean: tuple
    std: tuple
    context: int = 0

    @property
    def is_text(self) -> bool:
        return self.context > 0

    def example_input(self, batch: int = 1, device=None):
        """A zero input of the set's size: images [B, C, H, W] float, token ids [B, context] long."""
        import torch

        if self.is_text:
            return torch.zeros(batch, self.context, dtype=torch.long, device=device)
        return torch.zeros(batch, self.in_channels, self.img_size, self.img_size, device=device)

    def input_text(self) -> str:
        """The input's size in words: ``1×8×8 images`` or ``64-token windows``."""
        if self.is_text:
            return f"{self.context}-token windows"
        return f"{self.in_channels}×{self.img_size}×{self.img_size} images"


__all__ = ["DataError", "DataInfo"]
