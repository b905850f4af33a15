"""Finite scalar quantisation (FSQ, Mentzer et al. 2023) as the tokenizer's codebook.

FSQ rounds each of a few bounded latent channels to a fixed set of levels; the code index is
the mixed-radix number of those levels. Unlike a learned VQ codebook it cannot collapse and
needs no EMA state or dead-code revival, which matters when training on a tiny cohort.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class FSQ(nn.Module):
    def __init__(self, levels: Sequence[int] = (8, 8, 8), eps: float = 1e-3):
        super().__init__()
        lv = torch.tensor(list(levels), dtype=torch.float32)
        basis = torch.cumprod(torch.tensor([1] + list(levels[:-1]), dtype=torch.int64), 0)
        self.register_buffer("levels", lv, persistent=False)
        self.register_buffer("basis", basis, persistent=False)
        self.dim = len(levels)
        self.codebook_size = int(torch.prod(lv).item())
        self.eps = eps

    def _bound(self, z: torch.Tensor) -> torch.Tensor:
        lv = self.levels.view(1, -1, 1, 1, 1)
        half = (lv - 1) * (1 - self.eps) / 2
        offset = torch.where(lv % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half)
        return torch.tanh(z + shift) * half - offset

    def forward(self, z: torch.Tensor):
        """z [B, dim, ...] -> (quantised codes in [-1, 1) with straight-through gradient, indices [B, ...])."""
        bounded = self._bound(z.float())
        q = bounded + (torch.round(bounded) - bounded).detach()
        half_width = (self.levels // 2).view(1, -1, 1, 1, 1)
        idx = ((torch.round(bounded) + half_width).long() * self.basis.view(1, -1, 1, 1, 1)).sum(1)
        return q / half_width, idx

    def indices_to_codes(self, idx: torch.Tensor) -> torch.Tensor:
        """indices [B, ...] -> codes [B, dim, ...] (the decoder's input)."""
        lv = self.levels.long().view(1, -1, 1, 1, 1)
        digits = (idx.unsqueeze(1) // self.basis.view(1, -1, 1, 1, 1)) % lv
        half_width = (self.levels // 2).view(1, -1, 1, 1, 1)
        return (digits.float() - half_width) / half_width
