"""Decoded tissue next to the brain continues the brain's edge (cpmae.seam), on a synthetic volume."""
import numpy as np
from scipy import ndimage

from cpmae.seam import continue_brain_edge


def test_the_band_outside_the_brain_takes_the_inner_brain_edge_and_fades():
    z, y, x = np.mgrid[:32, :32, :32]
    r = np.sqrt((z - 16) ** 2 + (y - 16) ** 2 + (x - 16) ** 2)
    brain = r <= 8
    image = np.where(brain, 1.0, 0.0).astype(np.float32)
    image[brain & ~ndimage.binary_erosion(brain)] = 5.0  # the mask's outer shell: not a source
    decoded = np.full(brain.shape, 3.0, np.float32)
    out = continue_brain_edge(decoded, image, brain, width=2.0)
    dist = ndimage.distance_transform_edt(~brain)
    assert np.allclose(out[(dist > 0) & (dist <= 1.0)], 1.0)  # next to the brain: the inner edge's value
    assert np.allclose(out[dist >= 3.0], 3.0)  # beyond the band: the decoder's
    mid = (dist > 1.0) & (dist < 3.0)
    assert ((out[mid] > 1.0) & (out[mid] < 3.0)).all()
    assert np.array_equal(out[brain], decoded[brain])  # inside: untouched (the blend pastes the brain)
    assert continue_brain_edge(decoded, image, brain, width=0.0) is decoded
    # strength scales the pull towards the edge: a quarter of the way next to the brain, none at 0
    quarter = continue_brain_edge(decoded, image, brain, width=1.0, strength=0.25)
    assert np.allclose(quarter[(dist > 0) & (dist <= 1.0)], 0.25 * 1.0 + 0.75 * 3.0)
    assert np.allclose(quarter[dist >= 2.0], 3.0) and np.array_equal(quarter[brain], decoded[brain])
    assert continue_brain_edge(decoded, image, brain, width=1.0, strength=0.0) is decoded
