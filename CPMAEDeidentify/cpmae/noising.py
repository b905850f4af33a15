"""Paella-style token noising, shared by prior training and sampling.

CP-MAE: each token is kept with probability α_t = 1 - t and otherwise resampled uniformly from
the codebook, with t ~ U(0, 1) per sample. Paella v3 down-weights the loss on tokens that were
kept (they are easy to copy); ``clean_weight`` does that.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F


def renoise(tokens: torch.Tensor, t: torch.Tensor, codebook_size: int,
            generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Replace each token with a uniform random one with probability t (per sample) -> (noisy, replaced)."""
    gen_device = generator.device if generator is not None else tokens.device
    u = torch.rand(tokens.shape, generator=generator, device=gen_device).to(tokens.device)
    rand = torch.randint(0, codebook_size, tokens.shape, generator=generator, device=gen_device).to(tokens.device)
    replaced = u < t.to(tokens.device).view(-1, *([1] * (tokens.dim() - 1)))
    return torch.where(replaced, rand, tokens), replaced


def prior_loss(logits: torch.Tensor, target: torch.Tensor, replaced: torch.Tensor,
               clean_weight: float = 0.3) -> torch.Tensor:
    """Cross-entropy over tokens, weighted 1 for replaced tokens and ``clean_weight`` for kept ones."""
    ce = F.cross_entropy(logits.float(), target, reduction="none")
    w = torch.where(replaced, 1.0, clean_weight).to(ce.dtype)
    return (ce * w).sum() / w.sum()
