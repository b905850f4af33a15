"""Envelope-constrained sampling (architecture-1 bundles only): CP-GAN's privacy transform.

Kept so that the 2026-11 demonstration bundles still run as they were measured. Architecture-2
bundles never use it: the hull fill-and-cut copies the patient's silhouette (a silhouette-only
attacker identified 62-100 % of subjects, ``shared/notes/model-review.md``), and
``code_brightness`` is not a property of a code when the decoder reaches across cells.

CP-GAN conditions its generator on the convex hull of the head, a shape that keeps the head's
size and outline but smooths the face away. We compute the same hull (``cpmae.envelope``) and use
it twice: the decoded head is limited to it, and the sampler is told which token cells are head.
In a cell that lies mostly inside the hull and outside the brain, codes that decode to air are
forbidden; in a cell wholly outside the hull, codes that decode to tissue are forbidden. Without
this, a weakly trained prior may leave parts of the face as air, i.e. remove the face instead of
remodeling it. Cells that touch the brain are not constrained (the brain is copied back anyway).
"""
from __future__ import annotations

import numpy as np
import torch

from cpmae.conditions import cell_fractions  # noqa: F401  (re-exported: tests and callers use it here)

#: decoded intensity (in units of the intensity scale) below which a code counts as air
AIR_LEVEL = 0.1
#: a token cell counts as head when at least this fraction of it lies in the hull; the decoded head
#: is cut to the hull afterwards, so tissue drawn in the outer part of a boundary cell is removed
INSIDE_FRACTION = 0.5
_PROBE_TOKENS = 3  # a 3³ block of one code; its centre cell is free of padding effects


@torch.no_grad()
def code_brightness(tokenizer) -> np.ndarray:
    """Mean decoded intensity of each code (centre cell of a constant 3³ token block), cached."""
    cached = getattr(tokenizer, "_cpmae_code_brightness", None)
    if cached is not None:
        return cached
    k, f, n = tokenizer.codebook_size, tokenizer.cfg.factor, _PROBE_TOKENS
    device = next(tokenizer.parameters()).device
    out = np.empty(k, np.float32)
    for start in range(0, k, 128):
        codes = torch.arange(start, min(k, start + 128), device=device)
        tokens = codes.view(-1, 1, 1, 1).expand(-1, n, n, n)
        vol = tokenizer.decode(tokens)[:, 0, f:2 * f, f:2 * f, f:2 * f].float()
        out[start:start + len(codes)] = vol.mean(dim=(1, 2, 3)).cpu().numpy()
    tokenizer._cpmae_code_brightness = out
    return out


def envelope_logit_bias(hull: np.ndarray, brain: np.ndarray, tokenizer, air_level: float = AIR_LEVEL) -> torch.Tensor:
    """Additive logit bias [1,K,T,T,T] (0 or -inf) that keeps the sampled head inside the hull."""
    f = tokenizer.cfg.factor
    hull_c, brain_c = cell_fractions(hull, f), cell_fractions(brain, f)
    bright = torch.from_numpy(code_brightness(tokenizer) >= air_level)  # [K]
    inside = torch.from_numpy((hull_c >= INSIDE_FRACTION) & (brain_c == 0))  # [T,T,T]
    outside = torch.from_numpy(hull_c == 0)
    if bright.all() or not bright.any():  # a codebook without air (or without tissue): nothing to steer
        inside[:] = False
        outside[:] = False
    forbid = (inside[None] & ~bright[:, None, None, None]) | (outside[None] & bright[:, None, None, None])
    bias = torch.zeros(forbid.shape, dtype=torch.float32)
    bias[forbid] = float("-inf")
    return bias[None]
