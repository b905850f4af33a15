"""One place that turns a stored config into a network, for training, checkpoints and bundles.

A config stored before architectures were numbered (the 2026-11 demonstration bundles and runs)
has no ``arch`` key and is architecture 1 (the dataclasses' defaults). Architecture 2 (local
tokenizer with clean air and 12,800 codes, digit-wise prior with position and geometry inputs)
is chosen with ``arch: 2``; ``ARCH2`` holds its defaults, under whatever a config sets itself.
"""
from __future__ import annotations

from typing import Any, Dict

from torch import nn

KINDS = ("tokenizer", "prior")
LATEST = 2  #: the architecture new training runs get from the shipped presets

ARCH2 = {
    "tokenizer": {"arch": 2, "channels": (32, 64), "blocks": (1, 2), "levels": (8, 8, 8, 5, 5)},
    "prior": {"arch": 2, "embed_dim": 8, "channels": (64, 128), "blocks": 2, "head_channels": 32,
              "attention": False, "levels": (8, 8, 8, 5, 5), "codebook_size": 12800, "cond_channels": 1},
}


def architecture(config: Dict[str, Any]) -> int:
    return int(config.get("arch", 1))


def complete(kind: str, config: Dict[str, Any]) -> Dict[str, Any]:
    """A full config dict: the architecture's defaults under ``config``'s own keys."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    base = dict(ARCH2[kind]) if architecture(config) == 2 else {}
    base.update(config)
    from cpmae.models.prior import PriorConfig
    from cpmae.models.tokenizer import TokenizerConfig

    cls = TokenizerConfig if kind == "tokenizer" else PriorConfig
    return cls.from_dict(base).to_dict()


def build(kind: str, config: Dict[str, Any]) -> nn.Module:
    """``kind`` "tokenizer" (either part) or "prior"; ``config`` a stored or partial config dict."""
    from cpmae.models.digit_prior import DigitPrior
    from cpmae.models.prior import PriorConfig, TokenPrior
    from cpmae.models.tokenizer import Tokenizer, TokenizerConfig

    full = complete(kind, config)
    if kind == "tokenizer":
        return Tokenizer(TokenizerConfig.from_dict(full))
    pc = PriorConfig.from_dict(full)
    return TokenPrior(pc) if pc.arch == 1 else DigitPrior(pc)


def component_kind(name: str) -> str:
    """Bundle component name (``brain_tokenizer``, ``nonbrain_tokenizer``, ``prior``) -> kind."""
    return "prior" if name == "prior" else "tokenizer"
