"""Networks of CP-MAE: two 3-D tokenizers (brain, non-brain) and the conditional token prior."""
from cpmae.models.prior import PriorConfig, TokenPrior
from cpmae.models.tokenizer import Tokenizer, TokenizerConfig

__all__ = ["PriorConfig", "TokenPrior", "Tokenizer", "TokenizerConfig"]
