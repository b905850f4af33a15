"""The inference speed-ups of 2026-12-01 compute what the plain code computed.

Each fast path is checked against a reference written the slow, obvious way, so a future torch
that changes a kernel choice, or an edit of the layout, shows here and not as a quietly other face.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from torch import nn

from cpmae.models import build
from cpmae.models.digit_prior import _space_to_depth_last
from cpmae.models.layers import ChannelNorm, Conv3d, pixel_unshuffle3d
from cpmae.sampler import draw_categorical
from phantoms import phantom_image


def _kernels(fn) -> set:
    with torch.profiler.profile() as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_conv3d_takes_onednn_for_a_small_one_scan_input_and_matches_torch():
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    torch.manual_seed(0)
    fast = Conv3d(16, 16, 3, padding=1)
    plain = nn.Conv3d(16, 16, 3, padding=1)
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(1, 16, 8, 8, 8)  # N·C·D·H = 1,024: PyTorch's own choice is its im2col kernel
    with torch.inference_mode():
        assert "aten::slow_conv3d_forward" in _kernels(lambda: plain(x))
        kernels = _kernels(lambda: fast(x))
        assert "aten::mkldnn_convolution" in kernels and "aten::slow_conv3d_forward" not in kernels
        assert torch.allclose(fast(x), plain(x), atol=1e-5)
        xl = x.contiguous(memory_format=torch.channels_last_3d)  # what ChannelNorm hands on
        assert torch.allclose(fast(xl), plain(x), atol=1e-5)
    y = fast(x.requires_grad_())  # training keeps PyTorch's path and its gradients
    y.sum().backward()
    assert fast.weight.grad is not None and torch.isfinite(fast.weight.grad).all()


def test_channel_norm_is_layer_norm_over_each_voxels_channels():
    torch.manual_seed(1)
    norm = ChannelNorm(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 6, 5, 4, 3) * 3 + 1
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + norm.eps) * norm.weight.view(1, -1, 1, 1, 1) + norm.bias.view(1, -1, 1, 1, 1)
    assert torch.allclose(norm(x), expected, atol=1e-5)


def test_space_to_depth_channels_last_equals_pixel_unshuffle():
    h = torch.randn(2, 8, 6, 4, 5)  # [B,d,h,w,C]
    expected = pixel_unshuffle3d(h.movedim(-1, 1).contiguous(), 2)
    got = _space_to_depth_last(h, 2)
    assert got.shape == expected.shape and torch.equal(got, expected)


def test_digit_prior_forward_matches_the_channel_first_assembly():
    """The prior's input (embeddings, condition maps, positions) assembled channels-last gives the
    logits of the channel-first cat + pixel_unshuffle it replaced."""
    from cpmae.models.digit_prior import coordinates, to_digits
    from cpmae.models.layers import pixel_shuffle3d
    from cpmae.models.prior import unet_trunk

    torch.manual_seed(2)
    prior = build("prior", {"arch": 2, "channels": [8, 16], "blocks": 1, "embed_dim": 2, "head_channels": 4,
                            "codebook_size": 12800, "token_size": 8, "levels": (8, 8, 8, 5, 5)}).eval()
    noisy = torch.randint(0, 12800, (2, 8, 8, 8))
    brain = torch.randint(0, 12801, (2, 8, 8, 8))
    cond = torch.rand(2, prior.n_cond, 8, 8, 8)
    t, origin = torch.tensor([0.7, 0.2]), torch.tensor([[0, 0, 0], [4, 0, 8]])
    with torch.inference_mode():
        xd = to_digits(noisy, prior.levels)
        h = torch.cat([emb(xd[:, d]) for d, emb in enumerate(prior.embed_x)] + [prior._embed_brain(brain)], -1)
        h = torch.cat([h.permute(0, 4, 1, 2, 3), cond, coordinates(origin, 2, (8, 8, 8), 8, "cpu")], 1)
        h = unet_trunk(prior, prior.stem(pixel_unshuffle3d(h.contiguous(), 2)), t)
        expected = prior.out(pixel_shuffle3d(prior.head(h), 2))
        got = prior(noisy, brain, t, cond=cond, origin=origin)
    assert torch.allclose(got, expected, atol=1e-4)


def test_draw_follows_the_softmax_and_the_seed():
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0]).view(1, 4, 1, 1, 1).expand(1, 4, 40, 40, 25).contiguous()
    draws = draw_categorical(logits, torch.Generator().manual_seed(0), temperature=0.5)
    freq = torch.bincount(draws.flatten(), minlength=4).float() / draws.numel()
    expected = torch.softmax(torch.tensor([0.0, 1.0, 2.0, -1.0]) / 0.5, 0)
    assert torch.allclose(freq, expected, atol=0.01)  # 40,000 draws: s.e. <= 0.0025
    again = draw_categorical(logits, torch.Generator().manual_seed(0), temperature=0.5)
    other = draw_categorical(logits, torch.Generator().manual_seed(1), temperature=0.5)
    assert torch.equal(draws, again) and not torch.equal(draws, other)
    huge = torch.tensor([1e4, 0.0]).view(1, 2, 1, 1, 1)  # exp() of the raw logits would overflow
    assert int(draw_categorical(huge, torch.Generator().manual_seed(0))) == 0


def test_brain_picture_of_the_brain_box_equals_the_whole_scans():
    from cpmae.intensity import intensity_scale
    from cpmae.pose import BRAIN_SMOOTHING_MM, REGISTRATION_SPACING_MM, _brain_picture
    from cpmae.render import canonical_volume

    img, brain = phantom_image(64, spacing=2.0)
    tilt = sitk.VersorTransform((0.0, 0.0, 1.0), 0.3)  # an oblique scan: a real resampling
    img.SetDirection(tilt.GetMatrix())
    brain.SetDirection(tilt.GetMatrix())
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    inside = sitk.GetArrayViewFromImage(brain) > 0
    whole = sitk.GetImageFromArray(np.where(inside, arr / intensity_scale(arr), 0.0).astype(np.float32))
    whole.CopyInformation(img)
    expected = sitk.SmoothingRecursiveGaussian(canonical_volume(whole, REGISTRATION_SPACING_MM), BRAIN_SMOOTHING_MM)
    got = _brain_picture(img, brain)
    assert got.GetSize() == expected.GetSize() and np.allclose(got.GetOrigin(), expected.GetOrigin())
    assert np.abs(sitk.GetArrayViewFromImage(expected)).max() > 0.1
    assert np.allclose(sitk.GetArrayViewFromImage(got), sitk.GetArrayViewFromImage(expected), atol=1e-5)
