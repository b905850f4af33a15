"""What the architecture-2 prior is conditioned on besides the brain tokens, per token cell.

Computed the same way in training (``cpmae.train``) and at de-identification (``cpmae.pipeline``),
hence one module. Channel 0 is the brain-mask occupancy of each cell (0…1): it tells the prior
exactly where the pasted-back brain will be, which brain tokens say only coarsely. Face-shape
maps (a face surface drawn from a shape model, placed by the brain) follow when the prior was
trained with ``shape_channels`` > 0.
"""
from __future__ import annotations

import numpy as np


def cell_fractions(mask: np.ndarray, factor: int) -> np.ndarray:
    """Fraction of each token cell (factor³ voxels) covered by ``mask`` [z,y,x] -> [T,T,T] float32."""
    t = [s // factor for s in mask.shape]
    m = np.asarray(mask, dtype=np.float32)[: t[0] * factor, : t[1] * factor, : t[2] * factor]
    return m.reshape(t[0], factor, t[1], factor, t[2], factor).mean(axis=(1, 3, 5))


def brain_maps(brain: np.ndarray, factor: int) -> np.ndarray:
    """[1,T,T,T] float32: the brain condition channel(s) of a model-grid brain mask."""
    return cell_fractions(brain > 0, factor)[None].astype(np.float32)
