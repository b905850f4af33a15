"""Envelope-constrained sampling: the sampler cannot put air inside the head envelope or tissue outside it."""
from __future__ import annotations

import numpy as np
import torch

from cpmae.constraints import cell_fractions, code_brightness, envelope_logit_bias
from cpmae.models import PriorConfig, Tokenizer, TokenizerConfig, TokenPrior
from cpmae.sampler import sample_nonbrain_tokens


class FixedBrightness(Tokenizer):
    """A tokenizer whose codes' brightness is known: even codes air, odd codes tissue."""

    def __init__(self):
        super().__init__(TokenizerConfig(in_size=64, token_size=16))
        self._cpmae_code_brightness = np.where(np.arange(self.codebook_size) % 2, 0.8, 0.0).astype(np.float32)


def test_cell_fractions():
    m = np.zeros((8, 8, 8), bool)
    m[:4, :4, :4] = True
    m[4:, 4:, 4:6] = True
    f = cell_fractions(m, 4)
    assert f.shape == (2, 2, 2) and f[0, 0, 0] == 1.0 and f[1, 1, 1] == 0.5 and f[0, 1, 0] == 0.0


def test_code_brightness_is_measured_per_code():
    torch.manual_seed(0)
    tok = Tokenizer(TokenizerConfig(in_size=64, token_size=16, channels=(4, 8))).eval()
    b = code_brightness(tok)
    assert b.shape == (tok.codebook_size,) and np.isfinite(b).all() and b.std() > 0
    assert code_brightness(tok) is b  # cached on the tokenizer


def test_sampled_tokens_respect_the_envelope():
    torch.manual_seed(0)
    tok = FixedBrightness().eval()
    t = 16
    hull = np.zeros((64,) * 3, bool)
    hull[8:56, 8:56, 8:56] = True  # token cells 2..13 inside
    brain = np.zeros_like(hull)
    brain[24:40, 24:40, 24:40] = True  # token cells 6..9
    bias = envelope_logit_bias(hull, brain, tok)
    prior = TokenPrior(PriorConfig(token_size=t, channels=(8, 8), embed_dim=4, head_channels=8)).eval()
    tokens = sample_nonbrain_tokens(prior, torch.zeros(1, t, t, t, dtype=torch.long), steps=2, seed=0,
                                    logit_bias=bias)[0].numpy()
    inside = np.zeros((t,) * 3, bool)
    inside[2:14, 2:14, 2:14] = True
    touches_brain = np.zeros_like(inside)
    touches_brain[6:10, 6:10, 6:10] = True
    assert (tokens[inside & ~touches_brain] % 2 == 1).all(), "air drawn inside the head envelope"
    assert (tokens[~inside] % 2 == 0).all(), "tissue drawn outside the head envelope"
    assert len(np.unique(tokens[touches_brain] % 2)) == 2  # cells touching the brain are not steered
