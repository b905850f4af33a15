"""Networks of CP-MAE: two 3-D tokenizers (brain, non-brain) and the conditional token prior."""
from cpmae.models.build import build
from cpmae.models.digit_prior import DigitPrior
from cpmae.models.prior import PriorConfig, TokenPrior
from cpmae.models.tokenizer import Tokenizer, TokenizerConfig

__all__ = ["build", "DigitPrior", "PriorConfig", "TokenPrior", "Tokenizer", "TokenizerConfig"]
