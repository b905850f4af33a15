"""``--device`` is resolved once (cpmae.device) and reaches deepbet and the model unchanged."""
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cpmae import brainmask, device, pipeline, weights
from cpmae.errors import InputError


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine with two CUDA GPUs, as far as the engine can tell (nothing is put on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize("spec, expected", [("cuda:1", "cuda:1"), ("CUDA:0", "cuda:0"), ("cuda", "cuda"),
                                            ("auto", "cuda"), (None, "cuda"), ("cpu", "cpu")])
def test_resolve_with_cuda(two_gpus, spec, expected):
    assert device.resolve_device(spec) == torch.device(expected)


def test_resolve_is_idempotent(two_gpus):
    dev = device.resolve_device("cuda:1")
    assert device.resolve_device(dev) is dev and device.resolve_device(str(dev)) == dev


@pytest.mark.parametrize("spec, words", [("cuda:1", "no CUDA GPU"), ("cuda", "no CUDA GPU"),
                                         ("gpu", "is not a device"), ("meta", "not supported")])
def test_refused_without_cuda_in_one_line(no_gpu, spec, words):
    with pytest.raises(InputError) as err:
        device.resolve_device(spec)
    assert words in str(err.value) and "\n" not in str(err.value) and spec in str(err.value)
    assert device.resolve_device("auto") == torch.device("cpu")


def test_index_beyond_the_machine_is_refused(two_gpus):
    with pytest.raises(InputError, match="has 2 CUDA GPU"):
        device.resolve_device("cuda:2")


def test_cuda_1_reaches_deepbet_and_the_model_unchanged(two_gpus, monkeypatch):
    """The bug this module fixes: ``cuda:1`` became ``cuda`` (GPU 0) for deepbet."""
    seen = {}

    class Stop(Exception):
        pass

    class FakeBundle:
        resolution = 128
        manifest = {}

    def fake_load_bundle(spec, resolution, dev):
        seen["model"] = dev
        return FakeBundle()

    def fake_deepbet(dev):
        seen["deepbet"] = dev
        raise Stop

    monkeypatch.setattr(weights, "load_bundle", fake_load_bundle)
    monkeypatch.setattr(brainmask, "_deepbet", fake_deepbet)
    img = sitk.GetImageFromArray(np.zeros((4, 4, 4), np.float32))
    with pytest.raises(Stop):
        pipeline.deidentify(img, device="cuda:1")
    assert seen == {"model": torch.device("cuda:1"), "deepbet": "cuda:1"}


def test_cli_refuses_cuda_1_without_cuda(no_gpu, tmp_path, capsys):
    from cpmae.cli import main
    from phantoms import phantom_image

    img, _ = phantom_image(size=48, spacing=5.0)
    src = tmp_path / "in.nii.gz"
    sitk.WriteImage(img, str(src))
    out = tmp_path / "out.nii.gz"
    assert main(["deidentify", str(src), str(out), "--device", "cuda:1", "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cuda:1" in err and "no CUDA GPU" in err
    assert not out.exists()


def test_ddp_takes_the_gpu_of_its_local_rank(two_gpus, monkeypatch):
    from cpmae.train import distributed

    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: None)
    assert distributed.pick_device("cuda", distributed.DistInfo(rank=1, world=2, local_rank=1)) == torch.device("cuda", 1)
    assert distributed.pick_device("cuda:1", distributed.DistInfo()) == torch.device("cuda:1")
