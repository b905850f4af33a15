"""Tiny datasets for the training tests: a prepared folder of phantom heads, a token folder.

They use the on-disk formats that ``cpmae prepare`` and ``cpmae encode`` write, so the tests
exercise the same loaders as real runs, at 32³ voxels instead of 256³.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from phantoms import phantom_arrays

TINY_TOKENIZER = {"channels": [4, 8], "blocks": [1, 1]}
TINY_PRIOR = {"channels": [8, 16], "blocks": 1, "embed_dim": 4, "head_channels": 4, "attention": True}


def write_prepared(folder: Path, n: int = 4, size: int = 32, resolution: int = 128) -> Path:
    folder = Path(folder)
    cases = []
    for i in range(n):
        img, brain = phantom_arrays(size, seed=i, nose=0.6 + 0.2 * i)
        case = folder / "cases" / f"sub-{i:02d}"
        case.mkdir(parents=True, exist_ok=True)
        np.save(case / f"image-{resolution}.npy", img)
        np.save(case / f"brain-{resolution}.npy", brain)
        cases.append({"id": f"sub-{i:02d}", "grids": {str(resolution): {
            "image": f"cases/sub-{i:02d}/image-{resolution}.npy", "brain": f"cases/sub-{i:02d}/brain-{resolution}.npy"}}})
    (folder / "manifest.json").write_text(json.dumps({"kind": "cpmae-prepared", "cases": cases, "skipped": []}), encoding="utf-8")
    return folder


def write_tokens(folder: Path, n: int = 4, token_size: int = 8, resolution: int = 128, codebook: int = 512) -> Path:
    """Random but structured token pairs (non-brain tokens depend on brain tokens, so there is signal)."""
    folder = Path(folder)
    (folder / "tokens").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    cases = []
    for i in range(n):
        brain = rng.integers(0, codebook, (token_size,) * 3).astype(np.int16)
        nonbrain = ((brain.astype(np.int64) * 7 + i) % codebook).astype(np.int16)
        np.savez(folder / "tokens" / f"sub-{i:02d}.npz", brain=brain, nonbrain=nonbrain)
        cases.append({"id": f"sub-{i:02d}", "file": f"tokens/sub-{i:02d}.npz"})
    (folder / "manifest.json").write_text(json.dumps({
        "kind": "cpmae-tokens", "resolution": resolution, "token_size": token_size, "codebook_size": codebook,
        "data": "test tokens", "cases": cases}))
    return folder


# ---------------------------------------------------------------------------------------------
# tests

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from cpmae.errors import InputError  # noqa: E402
from cpmae.train import data as D  # noqa: E402
from cpmae.train.checkpoint import latest_checkpoint, read_state  # noqa: E402
from cpmae.train.config import TrainConfig, resolve_config  # noqa: E402
from cpmae.train.logs import read_metrics  # noqa: E402
from cpmae.train.loop import lr_at, train  # noqa: E402
from cpmae.train.losses import ssim3d  # noqa: E402


def tiny_tokenizer_config(data: Path, **kw) -> TrainConfig:
    base = dict(task="tokenizer", part="nonbrain", resolution=128, data=str(data), crop=16, steps=4,
                batch_size=2, lr=1e-3, warmup_steps=1, cohort_size=3, val_subjects=1, val_every=0,
                checkpoint_every=2, model=dict(TINY_TOKENIZER), subject_cache="none", threads=1)
    base.update(kw)
    return TrainConfig.from_dict(base)


def tiny_prior_config(data: Path, **kw) -> TrainConfig:
    base = dict(task="prior", resolution=128, data=str(data), steps=4, batch_size=2, lr=1e-3, warmup_steps=1,
                cohort_size=3, val_subjects=1, val_every=0, checkpoint_every=2, token_crop=4,
                model=dict(TINY_PRIOR), threads=1)
    base.update(kw)
    return TrainConfig.from_dict(base)


def final_tensors(run: Path) -> dict:
    return load_file(str(latest_checkpoint(run) / "model.safetensors"))


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture
def prepared(tmp_path):
    return write_prepared(tmp_path / "prepared")


@pytest.fixture
def token_folder(tmp_path):
    return write_tokens(tmp_path / "tokens")


def test_tokenizer_resume_after_restart_is_bit_identical(tmp_path, prepared):
    """2N steps in one go == N steps, a new process resuming from the checkpoint, N more steps."""
    cfg = tiny_tokenizer_config(prepared)
    train(cfg, tmp_path / "straight")
    train(cfg, tmp_path / "killed", stop_at=2)  # stops right after checkpoint 2, like a kill
    assert read_state(latest_checkpoint(tmp_path / "killed"))["step"] == 2
    proc = subprocess.run([sys.executable, "-m", "cpmae", "train", "tokenizer", "--out", str(tmp_path / "killed"),
                           "--resume", "--progress", "none"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert read_state(latest_checkpoint(tmp_path / "killed"))["step"] == 4
    assert_bitwise_equal(final_tensors(tmp_path / "straight"), final_tensors(tmp_path / "killed"))
    straight = torch.load(latest_checkpoint(tmp_path / "straight") / "optimizer.pt", weights_only=True)
    resumed = torch.load(latest_checkpoint(tmp_path / "killed") / "optimizer.pt", weights_only=True)
    for p, st in straight["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, resumed["optimizer"]["state"][p][k]), (p, k)
    # the metrics log of the resumed run continues the straight one (same losses per step)
    loss = lambda run: [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl") if "loss" in r]  # noqa
    assert loss(tmp_path / "straight") == loss(tmp_path / "killed")
    # and the comparison can fail: another seed gives other weights
    train(tiny_tokenizer_config(prepared, seed=1), tmp_path / "seed1")
    other = final_tensors(tmp_path / "seed1")
    assert any(not torch.equal(other[k], v) for k, v in final_tensors(tmp_path / "straight").items())


def test_prior_resume_is_bit_identical(tmp_path, token_folder):
    cfg = tiny_prior_config(token_folder)
    train(cfg, tmp_path / "straight")
    train(cfg, tmp_path / "killed", stop_at=2)
    train(cfg, tmp_path / "killed", resume=True)
    assert_bitwise_equal(final_tensors(tmp_path / "straight"), final_tensors(tmp_path / "killed"))


def test_a_second_run_into_a_busy_folder_is_refused_and_a_killed_one_does_not_block(tmp_path, token_folder):
    """Two runs in one folder would overwrite each other's checkpoints; the lock dies with its
    process, so resuming after a kill (even -9) is never blocked."""
    from cpmae.errors import OutputError

    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, pathlib; from cpmae.train.loop import run_folder_lock\n"
         f"with run_folder_lock(pathlib.Path({str(run)!r})):\n print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match="another training run"):
            train(tiny_prior_config(token_folder), run, resume=True)
        assert latest_checkpoint(run) is None  # refused before writing anything
    finally:
        holder.kill()
        holder.wait(timeout=30)
    train(tiny_prior_config(token_folder), run, resume=True)
    assert latest_checkpoint(run) is not None


def test_tokenizer_learns_and_validates(tmp_path, prepared):
    """Loss falls on the phantoms; validation writes PSNR/SSIM/codebook metrics; curve drawn."""
    cfg = tiny_tokenizer_config(prepared, steps=30, lr=3e-3, val_every=30, checkpoint_every=30, batch_size=1,
                                ssim_weight=0.0)
    summary = train(cfg, tmp_path / "run")
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    for key in ("val_psnr", "val_ssim", "val_codebook_usage", "val_perplexity"):
        assert key in summary
    assert 0 < summary["val_codebook_usage"] <= 1 and summary["val_perplexity"] >= 1
    assert (tmp_path / "run" / "loss_curve.png").stat().st_size > 1000
    assert (latest_checkpoint(tmp_path / "run") / "config.yaml").is_file()


def test_samples_are_pure_functions_of_index(prepared):
    cfg = tiny_tokenizer_config(prepared)
    from cpmae.train.tasks import TokenizerTask

    a, b = TokenizerTask(cfg), TokenizerTask(cfg)
    assert torch.equal(a.batch([5, 6], "cpu"), b.batch([5, 6], "cpu"))
    assert not torch.equal(a.batch([5], "cpu"), a.batch([6], "cpu"))
    # DDP sharding: the ranks' indices partition the global batch
    shards = [D.rank_indices(3, 4, r, 2) for r in range(2)]
    assert sorted(shards[0] + shards[1]) == D.rank_indices(3, 4, 0, 1) == [12, 13, 14, 15]
    with pytest.raises(InputError):
        D.rank_indices(0, 3, 0, 2)


def test_subject_order_covers_every_subject_each_epoch():
    n = 5
    for epoch in range(3):
        got = {D.subject_for_sample(epoch * n + k, n, seed=0) for k in range(n)}
        assert got == set(range(n))
    assert [D.subject_for_sample(k, n, 0, repeats=3) for k in range(3)] == [D.subject_for_sample(0, n, 0)] * 3


def test_nonbrain_crops_favour_the_face():
    img, brain = phantom_arrays(64)
    vol = D.normalised(img, brain)
    corners = [D.choose_crop(vol, "nonbrain", 24, 4, 1.0, np.random.default_rng(k)) for k in range(40)]
    brain_y = np.nonzero(brain.any(axis=(0, 2)))[0].mean()
    centres_y = [c[1] + 12 for c in corners]
    assert np.mean(centres_y) < brain_y  # the face is at low y on the model grid
    assert all(c[1] % 4 == 0 for c in corners)


def test_band_channel_marks_the_voxels_next_to_the_brain_in_the_crop():
    """The band is computed with the brain just outside the crop, flips with the image, and band
    crops sit on the brain's edge."""
    from scipy import ndimage

    img, brain = phantom_arrays(64)
    vol = D.normalised(img, brain)
    full = D.brain_band(brain, 3)
    dist = ndimage.distance_transform_edt(brain == 0)
    assert np.array_equal(full, (brain == 0) & (dist <= 3)) and full.any()
    for k in range(6):
        rng, again = np.random.default_rng(k), np.random.default_rng(k)
        s = D.tokenizer_sample(vol, "nonbrain", 24, 4, 0.0, 0.5, rng, band_voxels=3, band_bias=1.0)
        assert s.shape == (2, 24, 24, 24)
        z, y, x = D.choose_crop(vol, "nonbrain", 24, 4, 0.0, again, band_bias=1.0)
        want_img, want_band = vol.part("nonbrain")[z:z + 24, y:y + 24, x:x + 24], full[z:z + 24, y:y + 24, x:x + 24]
        flipped = again.random() < 0.5
        if flipped:
            want_img, want_band = want_img[:, :, ::-1], want_band[:, :, ::-1]
        assert np.array_equal(s[0], want_img) and np.array_equal(s[1] > 0, want_band)
        assert s[1].any()  # centred on the brain's edge: the band is in the crop
    plain = D.tokenizer_sample(vol, "nonbrain", 24, 4, 0.0, 0.5, np.random.default_rng(0))
    assert plain.shape == (1, 24, 24, 24)


def test_decoder_only_band_fine_tune_keeps_every_token_and_lowers_the_band_error(tmp_path, prepared, monkeypatch):
    """freeze_encoder + band_weight: the encoder (so every token, and a prior trained on them) is
    unchanged, the decoder moves, and the band error on the training crops falls."""
    from cpmae.train.tasks import TokenizerTask

    base = tiny_tokenizer_config(prepared, steps=6, checkpoint_every=6)
    train(base, tmp_path / "base")
    bundle_like = final_tensors(tmp_path / "base")
    cfg = tiny_tokenizer_config(prepared, steps=40, lr=3e-3, checkpoint_every=40, freeze_encoder=True,
                                band_weight=5.0, band_voxels=2, band_bias=0.5, init_from="base run")
    task = TokenizerTask(cfg)
    model = task.build()
    model.load_state_dict(bundle_like)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("enc_") for n in frozen)
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("dec_"))
    batch = task.batch(list(range(8)), "cpu")
    assert batch.shape[1] == 2 and batch[:, 1].sum() > 0
    with torch.no_grad():
        before_loss = float(task._band_l1(model(batch[:, :1])[0], batch[:, :1], batch[:, 1:]))
    from cpmae.train import loop as L

    # the base is a run folder, not a bundle: the warm start loads its weights directly
    monkeypatch.setattr(L, "warm_start", lambda m, c, t: m.load_state_dict(bundle_like))
    train(cfg, tmp_path / "ft")
    tuned = final_tensors(tmp_path / "ft")
    for name, value in bundle_like.items():
        if name.startswith("enc_"):
            assert torch.equal(tuned[name], value), name
    assert any(not torch.equal(tuned[n], v) for n, v in bundle_like.items() if n.startswith("dec_"))
    after = task.build()
    after.load_state_dict(tuned)
    with torch.no_grad():
        assert torch.equal(model.encode(batch[:, :1]), after.encode(batch[:, :1]))
        after_loss = float(task._band_l1(after(batch[:, :1])[0], batch[:, :1], batch[:, 1:]))
    assert after_loss < 0.9 * before_loss
    with pytest.raises(InputError, match="nonbrain tokenizer"):
        tiny_prior_config(prepared, band_weight=1.0)
    with pytest.raises(InputError, match="init_from"):  # a random encoder, frozen: codes no prior knows
        tiny_tokenizer_config(prepared, freeze_encoder=True)


def test_held_out_subjects_generated_under_bf16_autocast_are_the_float32_ones():
    """The loop validates under bf16 autocast where the CPU has it, and a held-out subject is first
    generated there: it must be the subject a float32 caller gets (it was bf16 warps, then a crash)."""
    plain = D.generate_subject(3, 128, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = D.generate_subject(3, 128, 7)
    assert np.array_equal(plain.image, under.image) and np.array_equal(plain.brain, under.brain)


def test_lr_schedule_warms_up_and_decays():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] == pytest.approx(0.1, abs=0.01)
    assert lr_at(20, cfg, budget_frac=1.0) == pytest.approx(0.1)


def test_ssim3d_is_one_for_equal_and_lower_for_noisy():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 16, 16, 16, generator=g)
    assert float(ssim3d(x, x)) == pytest.approx(1.0, abs=1e-5)
    noisy = x + 0.3 * torch.randn(x.shape, generator=g)
    s = ssim3d(noisy, x, reduction="none")
    assert s.shape == (2,) and float(s.max()) < 0.9


def test_config_precedence_and_errors(tmp_path):
    user = tmp_path / "cfg.yaml"
    user.write_text("lr: 0.5\nsteps: 7\nmodel: {channels: [4, 8]}\n", encoding="utf-8")
    cfg = resolve_config("tokenizer", {"steps": 9, "model": {"blocks": [1, 1]}}, user)
    assert cfg.lr == 0.5 and cfg.steps == 9 and cfg.crop == 64  # crop from the shipped preset of the
    # default grid (128³ since 2026-12-01: configs/tokenizer-128.yaml), not TrainConfig's 128
    assert TrainConfig.crop == 128 and cfg.resolution == 128
    assert cfg.model["channels"] == [4, 8] and cfg.model["blocks"] == [1, 1]
    user.write_text("lr: 0.5\nno_such_key: 1\n", encoding="utf-8")
    with pytest.raises(InputError, match="no_such_key"):
        resolve_config("tokenizer", {}, user)
    with pytest.raises(InputError, match="resolution"):
        TrainConfig(resolution=100).validate()


def test_cli_refuses_to_overwrite_a_run_and_bad_data(tmp_path, prepared):
    from cpmae.cli import main

    args = ["train", "tokenizer", "--out", str(tmp_path / "run"), "--resolution", "128", "--data", str(prepared),
            "--crop", "16", "--steps", "1", "--val-every", "0", "--set", "model.channels=[4,8]",
            "--set", "subject_cache=none", "--progress", "none"]
    assert main(args) == 0
    assert main(args) == 3  # OutputError: run exists, --resume not given
    assert main(args + ["--resume", "--lr", "0.1"]) == 2  # cannot change lr when resuming
    assert main(["train", "tokenizer", "--out", str(tmp_path / "r2"), "--data", str(tmp_path / "nowhere"),
                 "--progress", "none"]) == 2


def test_memory_options_train_the_same_model(tmp_path, prepared):
    """Activation checkpointing and channels-last change memory layout, not the maths.

    (adam_eps=1e-4: with 1e-8 Adam turns float-noise gradients into lr-sized steps, see the DDP test.)
    """
    plain = train(tiny_tokenizer_config(prepared, steps=2, checkpoint_every=0, adam_eps=1e-4), tmp_path / "plain")
    both = train(tiny_tokenizer_config(prepared, steps=2, checkpoint_every=0, adam_eps=1e-4,
                                       activation_checkpointing=True, channels_last=True), tmp_path / "both")
    assert both["loss"] == pytest.approx(plain["loss"], rel=1e-4)
    a, b = final_tensors(tmp_path / "plain"), final_tensors(tmp_path / "both")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
    bf16 = train(tiny_tokenizer_config(prepared, steps=1, checkpoint_every=0, precision="bf16"), tmp_path / "bf16")
    assert np.isfinite(bf16["loss"])


def test_sigterm_checkpoints_and_resume_continues_exactly(tmp_path, prepared):
    """A real signal to a real process: SIGTERM -> checkpoint of the current step, exit 130;
    --resume then continues as if nothing happened (constant lr, so the step count can change)."""
    import signal
    import time

    import yaml

    settings = dict(tiny_tokenizer_config(prepared).to_dict(), steps=100000, checkpoint_every=100000,
                    schedule="constant", warmup_steps=0, batch_size=1)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    run = tmp_path / "terminated"
    proc = subprocess.Popen([sys.executable, "-m", "cpmae", "train", "tokenizer", "--config", str(tmp_path / "cfg.yaml"),
                             "--out", str(run), "--progress", "none"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text(encoding="utf-8").splitlines()) >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err and "Traceback" not in err
    k = read_state(latest_checkpoint(run))["step"]
    assert k >= 3
    cfg = TrainConfig.from_dict(dict(settings, steps=k + 2))
    train(cfg, run, resume=True)
    train(cfg, tmp_path / "straight")
    assert read_state(latest_checkpoint(run))["step"] == k + 2
    assert_bitwise_equal(final_tensors(tmp_path / "straight"), final_tensors(run))
