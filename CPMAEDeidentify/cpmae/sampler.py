"""Seeded Paella sampling of non-brain tokens given brain tokens.

Start from uniformly random tokens, and for t = 1, ..., 1/N: predict every token, draw a
sample, and renoise it to the next (lower) noise level. All random numbers come from one CPU
``torch.Generator`` seeded by the caller, so the same seed gives the same face on any device,
and a different seed gives a different face. The categorical draw uses inverse-CDF sampling
with tokens-last probabilities: ``torch.multinomial`` over 32³ × 512 is several times slower.
"""
from __future__ import annotations

from typing import Optional

import torch

from cpmae.noising import renoise
from cpmae.progress import NULL, Reporter

DEFAULT_STEPS = 8


def draw_categorical(logits: torch.Tensor, generator: torch.Generator, temperature: float = 1.0) -> torch.Tensor:
    """logits [B,K,...] -> samples [B,...] by inverse CDF, randomness from ``generator`` (CPU)."""
    b, k = logits.shape[:2]
    spatial = logits.shape[2:]
    lg = logits.float().movedim(1, -1).reshape(-1, k)
    if temperature <= 0:
        return lg.argmax(-1).reshape(b, *spatial)
    # unnormalised probabilities suffice (u is scaled by the total); torch.softmax over many
    # rows of 5-8 logits was 70 % of a draw
    lg = lg / temperature
    cdf = (lg - lg.amax(-1, keepdim=True)).exp_().cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, generator=generator).to(cdf.device) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, u).clamp_(max=k - 1)
    return idx.reshape(b, *spatial)


@torch.no_grad()
def sample_nonbrain_tokens(prior, brain_tokens: torch.Tensor, steps: int = DEFAULT_STEPS, seed: int = 0,
                           temperature: float = 1.0, guidance: float = 1.0,
                           logit_bias: Optional[torch.Tensor] = None,
                           reporter: Reporter = NULL, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sample non-brain tokens [B,T,T,T] conditioned on ``brain_tokens`` [B,T,T,T].

    ``guidance`` > 1 applies classifier-free guidance against the null condition (2× cost).
    ``logit_bias`` [B|1,K,T,T,T] is added to the logits at every step (architecture 1 only,
    ``cpmae.constraints``: -inf forbids a code at a position). ``cond`` [B,C,T,T,T]: architecture
    2's condition maps (brain occupancy, face shape); the null condition zeroes them.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    gen = torch.Generator().manual_seed(int(seed))
    k = prior.codebook_size
    device = brain_tokens.device
    b = brain_tokens.shape[0]
    x = torch.randint(0, k, brain_tokens.shape, generator=gen).to(device)
    levels = torch.linspace(1.0, 0.0, steps + 1)
    extra = {} if cond is None else {"cond": cond.to(device)}
    null_extra = {} if cond is None else {"cond": torch.zeros_like(extra["cond"])}
    with reporter.stage("sample", total=steps) as st:
        for i in range(steps):
            t = levels[i].expand(b).to(device)
            logits = prior(x, brain_tokens, t, **extra)
            if guidance != 1.0:
                uncond = prior(x, prior.null_brain(brain_tokens), t, **null_extra)
                logits = uncond + guidance * (logits - uncond)
            if logit_bias is not None:
                logits = logits + logit_bias.to(logits.device)
            x = prior.draw(logits, gen, temperature)
            if i < steps - 1:
                x, _ = renoise(x.cpu(), levels[i + 1].expand(b), k, gen)
                x = x.to(device)
            st.advance()
    return x
