"""Architecture 2 (local tokenizer, clean air, digit-wise prior) and the training fixes around it.

Cheap checks with tiny random-init networks: what must hold for any weights of this architecture.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cpmae.conditions import SHAPE_MAPS_VERSION
from cpmae.models import DigitPrior, TokenPrior, Tokenizer, build
from cpmae.models.build import ARCH2, complete
from cpmae.models.digit_prior import from_digits, to_digits
from cpmae.models.fsq import FSQ
from cpmae.models.tokenizer import AIR
from cpmae.train.checkpoint import latest_checkpoint
from cpmae.train.config import TrainConfig
from cpmae.train.logs import read_metrics
from cpmae.train.loop import bf16_supported, train, use_bf16
from cpmae.train.tasks import PriorTask
from phantoms import phantom_arrays, phantom_image
from test_train import TINY_PRIOR, TINY_TOKENIZER, write_prepared

PKG = Path(__file__).resolve().parents[1] / "CPMAEDeidentify" / "cpmae"
TINY2_TOK = dict(TINY_TOKENIZER, arch=2)
TINY2_PRIOR = {"arch": 2, "channels": [8, 16], "blocks": 1, "embed_dim": 2, "head_channels": 4}
LEVELS = (8, 8, 8, 5, 5)


def tiny_tokenizer(in_size: int, token_size: int, arch: int = 2) -> Tokenizer:
    torch.manual_seed(0)
    cfg = dict(in_size=in_size, token_size=token_size, channels=(4, 8), blocks=(1, 1), arch=arch)
    return build("tokenizer", cfg).eval()


def head_volume(size: int) -> torch.Tensor:
    img, brain = phantom_arrays(size)
    img = img / np.percentile(img[img > 0], 99.5)
    return torch.from_numpy((img * (1 - brain)).astype(np.float32))[None, None]


def test_tokens_of_a_crop_equal_whole_volume_tokens_away_from_the_edge():
    """Local norms only: a crop and the whole head give the same latents (hence tokens) beyond the
    receptive field of the crop's edge. Architecture 1 (whole-volume GroupNorm) does not."""
    x = head_volume(96)  # 24³ tokens, 4 voxels per token
    crop = x[:, :, 32:96, 32:96, 32:96]  # tokens 8..23 of the whole volume; its edge is at token 8
    margin = 6  # tokens from the crop's inner edge (receptive field of the encoder)
    for arch, equal in ((2, True), (1, False)):
        tok = tiny_tokenizer(96, 24, arch)
        with torch.no_grad():
            whole = tok.encode_latent(x)[:, :, 8 + margin:, 8 + margin:, 8 + margin:]
            part = tok.encode_latent(crop)[:, :, margin:, margin:, margin:]
        assert torch.allclose(whole, part, atol=1e-5) is equal, f"arch {arch}"
    tok = tiny_tokenizer(96, 24, 2)
    assert torch.equal(tok.encode(x)[:, 8 + margin:, 8 + margin:, 8 + margin:],
                       tok.encode(crop)[:, margin:, margin:, margin:])


def test_clean_air_is_one_code_and_decodes_to_zero():
    tok = tiny_tokenizer(32, 8)
    x = head_volume(32)
    tokens = tok.encode(x)
    cells = torch.nn.functional.max_pool3d(x, 4, 4)[:, 0] < tok.cfg.air_level
    assert cells.any() and (~cells).any()
    assert torch.equal(tokens == AIR, cells | (tokens == AIR))  # every air cell has the air code
    assert (tokens[cells] == AIR).all()
    out = tok.decode(torch.full((1, 8, 8, 8), AIR, dtype=torch.long))
    assert torch.count_nonzero(out) == 0
    recon, idx, _ = tok(x)
    air_voxels = cells.repeat_interleave(4, 1).repeat_interleave(4, 2).repeat_interleave(4, 3)[:, None]
    assert torch.count_nonzero(recon[air_voxels]) == 0


def test_fsq_digits_round_trip_and_match_the_quantizer():
    fsq = FSQ(LEVELS)
    assert fsq.codebook_size == 12800
    idx = torch.randint(0, 12800, (2, 4, 4, 4))
    digits = to_digits(idx, LEVELS)
    assert digits.shape == (2, 5, 4, 4, 4)
    assert torch.equal(from_digits(digits, LEVELS), idx)
    half = torch.tensor([4, 4, 4, 2, 2]).view(1, 5, 1, 1, 1)
    assert torch.allclose(fsq.indices_to_codes(idx), (digits.float() - half) / half)
    assert AIR == 0 and (to_digits(torch.tensor([[AIR]]), LEVELS) == 0).all()


def test_digit_prior_cost_stays_flat_and_draws_by_seed():
    prior = build("prior", dict(TINY2_PRIOR, codebook_size=12800, token_size=8, levels=LEVELS)).eval()
    assert isinstance(prior, DigitPrior)
    noisy = torch.randint(0, 12800, (1, 8, 8, 8))
    brain = prior.null_brain(noisy)
    cond = torch.rand(1, 1, 8, 8, 8)
    logits = prior(noisy, brain, torch.tensor([0.5]), cond=cond, origin=torch.tensor([[4, 0, 0]]))
    assert logits.shape == (1, sum(LEVELS), 8, 8, 8)  # 34 logits per token, not 12,800
    # the output layer of a one-softmax prior would hold 12,800 × head_channels weights
    assert prior.out[-1].weight.numel() == sum(LEVELS) * 4
    a = prior.draw(logits, torch.Generator().manual_seed(3))
    b = prior.draw(logits, torch.Generator().manual_seed(3))
    c = prior.draw(logits, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c) and int(a.max()) < 12800
    # position matters: the same window at another place of the grid gives other logits
    other = prior(noisy, brain, torch.tensor([0.5]), cond=cond, origin=torch.tensor([[0, 0, 0]]))
    assert not torch.allclose(logits, other)
    target = torch.randint(0, 12800, (1, 8, 8, 8))
    loss = prior.loss(logits, target, torch.ones_like(target, dtype=torch.bool))
    assert torch.isfinite(loss) and float(loss.detach()) > 0


def test_build_has_no_circle_and_keeps_architecture_1():
    """checkpoint.py and weights.py build networks through cpmae.models.build only."""
    for rel in ("train/checkpoint.py", "weights.py"):
        tree = ast.parse((PKG / rel).read_text(encoding="utf-8"))
        mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "cpmae.train.tasks" not in mods, rel
        assert "cpmae.models.build" in mods, rel
    old = {"codebook_size": 512, "token_size": 32, "embed_dim": 4, "channels": [8, 8], "blocks": 1,
           "cond_dropout": 0.1, "head_channels": 4, "attention": False}  # a 2026-11 manifest: no "arch"
    assert isinstance(build("prior", old), TokenPrior)
    assert build("tokenizer", {"in_size": 128, "token_size": 32}).cfg.arch == 1
    assert complete("tokenizer", {"arch": 2, "in_size": 128})["levels"] == ARCH2["tokenizer"]["levels"]
    with pytest.raises(ValueError):
        build("decoder", {})


def test_bf16_gate_follows_the_cpu():
    cpu = torch.device("cpu")
    assert not bf16_supported(cpu, flags={"avx2", "avx512f"})
    assert bf16_supported(cpu, flags={"avx512f", "avx512_bf16"})
    assert bf16_supported(cpu, flags={"amx_bf16"})
    assert not use_bf16(TrainConfig(precision="fp32"), cpu)
    assert use_bf16(TrainConfig(precision="bf16"), cpu)
    assert use_bf16(TrainConfig(precision="auto"), cpu) == bf16_supported(cpu)


def _arch1_pair(air_codes=(3, 7, 9)):
    """A 16³ token pair whose air is three different codes (as in the 2026-11 tokenizer)."""
    rng = np.random.default_rng(0)
    nb = np.array(air_codes)[rng.integers(0, len(air_codes), (16, 16, 16))]
    brain = np.full((16, 16, 16), 5)
    brain[6:12, 8:14, 5:11] = 100  # the brain, towards high y
    nb[4:12, 2:8, 4:12] = rng.integers(200, 300, (8, 6, 8))  # face tissue at low y
    return brain, nb, None


def test_face_crops_exclude_every_air_code():
    cfg = TrainConfig(task="prior", token_crop=4, face_bias=1.0)

    class Pairs:
        arch, levels, codebook_size, token_size, description, cohort_seeds = 1, None, 512, 16, "", []

    task = PriorTask(cfg, pairs=Pairs())
    pair = _arch1_pair()
    assert set(task.air_codes(pair[1])) >= {3, 7, 9}
    cells = task.face_cells(pair)
    assert len(cells) and all(pair[1][tuple(c)] >= 200 for c in cells)
    brain_y = np.nonzero((pair[0] == 100).any(axis=(0, 2)))[0].mean()
    assert cells[:, 1].max() < brain_y


def write_tokens2(folder: Path, n: int = 4, token_size: int = 8, seeds=(7,), shape: bool = False,
                  shape_version: int = None) -> Path:
    """Architecture-2 token pairs with occupancy (and face-shape) maps, as `cpmae encode` writes them."""
    (folder / "tokens").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    cases = []
    for i in range(n):
        brain = rng.integers(0, 12800, (token_size,) * 3).astype(np.int16)
        nonbrain = ((brain.astype(np.int64) * 7 + i) % 12800).astype(np.int16)
        occ = (rng.random((token_size,) * 3) > 0.5).astype(np.float16)
        extra = {"shape": rng.random((2,) + (token_size,) * 3).astype(np.float16)} if shape else {}
        np.savez(folder / "tokens" / f"s{i}.npz", brain=brain, nonbrain=nonbrain, occupancy=occ, **extra)
        cases.append({"id": f"s{i}", "file": f"tokens/s{i}.npz"})
    (folder / "manifest.json").write_text(json.dumps({
        "kind": "cpmae-tokens", "resolution": 128, "token_size": token_size, "codebook_size": 12800,
        "levels": list(LEVELS), "arch": 2, "cohort_seeds": list(seeds), "data": "test", "cases": cases,
        "shape_maps": shape, "shape_maps_version": shape_version or SHAPE_MAPS_VERSION}))
    return folder


def prior2_config(data: Path, **kw) -> TrainConfig:
    base = dict(task="prior", resolution=128, data=str(data), steps=4, batch_size=4, lr=1e-3, warmup_steps=1,
                cohort_size=3, val_subjects=1, val_every=0, checkpoint_every=2, token_crop=4,
                model=dict(TINY2_PRIOR), threads=1)
    base.update(kw)
    return TrainConfig.from_dict(base)


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    tokens = write_tokens2(tmp_path / "tok")
    train(prior2_config(tokens), tmp_path / "full")
    train(prior2_config(tokens, micro_batch=2), tmp_path / "accum")
    from safetensors.torch import load_file

    a = load_file(str(latest_checkpoint(tmp_path / "full") / "model.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "accum") / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    log = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert any("val_nll" in r for r in log) is False  # val_every 0


def test_budget_schedule_counts_time_before_a_resume(tmp_path):
    """The lr after --resume continues the decay over the run's whole budget instead of
    restarting at the peak (the 2026-11 loop restarted the cosine at every resume)."""
    tokens = write_tokens2(tmp_path / "tok")
    cfg = prior2_config(tokens, steps=1000, warmup_steps=1, budget_schedule=True, max_minutes=10.0,
                        checkpoint_every=2, schedule="cosine", min_lr_ratio=0.1)
    run = tmp_path / "run"
    train(cfg, run, stop_at=2)
    ckpt = latest_checkpoint(run)
    state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    state["elapsed_s"] = 0.95 * 600  # as if 95 % of the budget had been spent before the kill
    (ckpt / "state.json").write_text(json.dumps(state))
    train(cfg, run, resume=True, stop_at=3)
    lrs = {r["step"]: r["lr"] for r in read_metrics(run / "metrics.jsonl") if "lr" in r}
    assert lrs[2] > 0.9e-3  # before the kill: early in the budget, near the peak
    assert lrs[3] < 0.15e-3  # after the resume: near the floor (1e-4), not back at the peak


def tiny_tokenizer_runs(prepared: Path, folder: Path, val_every: int = 0) -> dict:
    """Two-step architecture-2 brain and non-brain tokenizer runs on ``prepared``: {part: run folder}."""
    runs = {}
    for part in ("brain", "nonbrain"):
        cfg = TrainConfig.from_dict(dict(task="tokenizer", part=part, resolution=128, data=str(prepared), crop=32,
                                         steps=2, batch_size=1, warmup_steps=1, cohort_size=3, val_subjects=1,
                                         val_every=val_every, checkpoint_every=2, model=dict(TINY2_TOK), threads=1))
        train(cfg, folder / part)
        runs[part] = folder / part
    return runs


def test_prior2_trains_validates_and_exports_seeds(tmp_path):
    """Tokenizers and prior of architecture 2 export to a bundle whose manifest names the cohort
    seeds, runs without the hull envelope, and keeps the brain bit-identical."""
    from cpmae.commands.export import export
    from cpmae.pipeline import deidentify
    from cpmae.weights import load_bundle

    prepared = write_prepared(tmp_path / "prepared", size=128)
    runs = tiny_tokenizer_runs(prepared, tmp_path, val_every=2)
    tokens = write_tokens2(tmp_path / "tok", token_size=32, seeds=(7, 11))
    summary = train(prior2_config(tokens, steps=2, val_every=2, full_grid_fraction=0.5), tmp_path / "prior")
    assert np.isfinite(summary["val_nll"]) and "val_nll_tissue" in summary
    out = export([runs["brain"], runs["nonbrain"], tmp_path / "prior"], tmp_path / "bundle")
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["architecture"] == 2
    assert manifest["data"]["cohort_seeds"] == [7, 11]
    assert all(isinstance(s, int) for s in manifest["data"]["cohort_seeds"])
    for key in ("source_heads", "steps", "hardware", "wall_time_s", "held_out_metrics"):
        assert key in manifest["data"]
    assert "code_brightness" not in manifest["components"]["nonbrain_tokenizer"]
    bundle = load_bundle(out, 128)
    assert isinstance(bundle.prior, DigitPrior) and bundle.architecture == 2
    img, mask = phantom_image()
    res = deidentify(img, mask, bundle=bundle, steps=2, seed=0, mask_limits={"min_cm3": 1})
    assert res.info["envelope"] is False and res.info["architecture"] == 2
    x, y = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(res.image)
    b = sitk.GetArrayFromImage(mask) > 0
    assert x[b].tobytes() == y[b].tobytes()


def test_a_decoder_fine_tune_ships_on_a_base_bundle_with_its_other_parts_and_records(tmp_path):
    """`cpmae export --base`: a non-brain run warm-started from a bundle with its encoder frozen
    replaces only that bundle's non-brain tokenizer; the brain tokenizer, prior, sampler settings and
    cohort seeds come from the base, and every token the base made is made again."""
    from cpmae.commands.export import export
    from cpmae.errors import InputError
    from cpmae.pipeline import deidentify
    from cpmae.weights import load_bundle

    prepared = write_prepared(tmp_path / "prepared", size=128)
    runs = tiny_tokenizer_runs(prepared, tmp_path)
    train(prior2_config(write_tokens2(tmp_path / "tok", token_size=32, seeds=(7, 11)), steps=2), tmp_path / "prior")
    base = export([runs["brain"], runs["nonbrain"], tmp_path / "prior"], tmp_path / "base")
    manifest = json.loads((base / "manifest.json").read_text(encoding="utf-8"))
    manifest["sampler"] = {"steps": 3, "temperature": 0.7}
    (base / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")

    tune = TrainConfig.from_dict(dict(task="tokenizer", part="nonbrain", resolution=128, data=str(prepared), crop=32,
                                      steps=3, batch_size=1, lr=3e-3, warmup_steps=1, cohort_size=3, val_subjects=1,
                                      val_every=3, checkpoint_every=3, model=dict(TINY2_TOK), threads=1,
                                      init_from=str(base), freeze_encoder=True, band_weight=4.0, band_voxels=2,
                                      band_bias=0.5))
    summary = train(tune, tmp_path / "tune")
    assert "val_band_l1" in summary
    with pytest.raises(InputError, match="missing run"):
        export([tmp_path / "tune"], tmp_path / "lonely")
    out = export([tmp_path / "tune"], tmp_path / "tuned", base=str(base))
    new = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    for k in ("brain_tokenizer", "prior"):
        assert new["components"][k]["sha256"] == manifest["components"][k]["sha256"]
        assert new["training"][k]["bundle"] == "base" and new["training"][k]["steps"] == 2
    assert new["components"]["nonbrain_tokenizer"]["sha256"] != manifest["components"]["nonbrain_tokenizer"]["sha256"]
    assert new["training"]["nonbrain_tokenizer"]["steps"] == 3
    assert new["sampler"] == {"steps": 3, "temperature": 0.7}
    assert new["data"]["cohort_seeds"] == [7, 11]
    assert new["derived_from"]["kept"] == ["brain_tokenizer", "prior"]
    assert "val_band_l1" in new["data"]["held_out_metrics"]["nonbrain_tokenizer"]
    a, b = load_bundle(base, 128), load_bundle(out, 128)
    img, mask = phantom_image()
    x = torch.from_numpy(sitk.GetArrayFromImage(img).astype(np.float32) / 100.0)[None, None][..., :128, :128, :128]
    x = torch.nn.functional.pad(x, [0, 128 - x.shape[-1], 0, 128 - x.shape[-2], 0, 128 - x.shape[-3]])
    assert torch.equal(a.nonbrain_tokenizer.encode(x), b.nonbrain_tokenizer.encode(x))
    assert not torch.equal(a.nonbrain_tokenizer.decode(a.nonbrain_tokenizer.encode(x)),
                           b.nonbrain_tokenizer.decode(b.nonbrain_tokenizer.encode(x)))
    res = deidentify(img, mask, bundle=b, seed=0, mask_limits={"min_cm3": 1})
    assert res.info["steps"] == 3


def test_shape_maps_mark_the_surface_and_what_lies_behind_it():
    from cpmae.conditions import shape_maps

    # a flat "face" at y = 10 voxels spanning z, x in 8..23 on a 32³ grid of 4-voxel tokens
    zz, xx = np.meshgrid(np.arange(8, 24), np.arange(8, 24), indexing="ij")
    pts = np.stack([zz.ravel(), np.full(zz.size, 10), xx.ravel()], 1)
    maps = shape_maps(pts, (8, 8, 8), 4)
    assert maps.shape == (2, 8, 8, 8)
    assert maps[0, 2:6, 2, 2:6].min() == 1.0 and maps[0][:, [0, 1, 3, 4, 5, 6, 7]].max() == 0
    assert maps[1, 3, :, 3].tolist() == [0, 0, 0.5, 1, 1, 1, 1, 1]  # behind the face: head
    assert maps[1, 0].max() == 0  # columns the surface does not cross stay 0
    # the share behind the surface says where in its cell the surface runs
    later = shape_maps(pts + np.array([0, 1, 0]), (8, 8, 8), 4)
    assert later[1, 3, 2, 3] == 0.25 and later[0, 3, 2, 3] == 1.0


def test_face_shape_condition_trains_and_is_drawn_at_deidentification(tmp_path, monkeypatch):
    """A prior with shape_channels trains on pairs carrying shape maps, refuses pairs without them,
    and at de-identification gets maps of a face drawn from the run's seed (never the patient's)."""
    from cpmae import conditions
    from cpmae.errors import InputError
    from cpmae.pipeline import deidentify
    from cpmae.weights import load_bundle, save_bundle

    model = dict(TINY2_PRIOR, shape_channels=2)
    summary = train(prior2_config(write_tokens2(tmp_path / "tok", shape=True), model=model, val_every=4),
                    tmp_path / "prior")
    assert np.isfinite(summary["val_nll"])
    with pytest.raises(InputError, match="condition maps"):
        train(prior2_config(write_tokens2(tmp_path / "plain"), model=model), tmp_path / "prior-plain")
    # maps made by an earlier rule (MakeHuman surface, not the subject's skin) are refused, not mixed
    with pytest.raises(InputError, match="version 1"):
        train(prior2_config(write_tokens2(tmp_path / "v1", shape=True, shape_version=1), model=model),
              tmp_path / "prior-v1")

    calls = []

    def fake_maps(face_seed, brain, reference, factor, rotation=None):
        calls.append(face_seed)
        return np.ones((2,) + tuple(s // factor for s in brain.shape), np.float32)

    monkeypatch.setattr(conditions, "face_shape_maps", fake_maps)
    torch.manual_seed(0)
    tok = build("tokenizer", dict(TINY2_TOK, in_size=128))
    prior = build("prior", dict(model, codebook_size=12800, levels=LEVELS, token_size=32))
    bundle = load_bundle(save_bundle(tmp_path / "shape-128", tok, tok, prior, 128, {"training_data": "none"}), 128)
    img, mask = phantom_image()
    res = [deidentify(img, mask, bundle=bundle, steps=1, seed=s, mask_limits={"min_cm3": 1}) for s in (0, 1)]
    assert calls == [conditions.face_seed_for(0), conditions.face_seed_for(1)] and calls[0] != calls[1]
    assert res[0].info["face_shape_seed"] == calls[0] and res[0].info["envelope"] is False
    x, y = sitk.GetArrayFromImage(img), sitk.GetArrayFromImage(res[0].image)
    b = sitk.GetArrayFromImage(mask) > 0
    assert x[b].tobytes() == y[b].tobytes()
    # the bundle's sampler settings (chosen by measurement) reach the sampler: guidance changes the draw
    assert res[0].info["guidance"] == 1.0
    bundle.manifest["sampler"] = {"guidance": 3.0}
    guided = deidentify(img, mask, bundle=bundle, steps=1, seed=0, mask_limits={"min_cm3": 1})
    assert guided.info["guidance"] == 3.0
    assert not np.array_equal(sitk.GetArrayFromImage(guided.image), y)
    # the bundle may ask for the decoded skin to be moved onto the drawn face (cpmae.conform): the
    # face of this seed is the surface asked for, the brain stays bit-identical
    from cpmae import conform

    fronts = []

    def fake_front(face_seed, brain, reference, rotation=None):
        fronts.append(face_seed)
        return np.full((brain.shape[0], brain.shape[2]), 2.0)

    monkeypatch.setattr(conform, "face_front", fake_front)
    bundle.manifest["sampler"] = {"face_surface": True}
    faced = deidentify(img, mask, bundle=bundle, steps=1, seed=0, mask_limits={"min_cm3": 1})
    assert faced.info["face_surface"] is True and res[0].info["face_surface"] is False
    assert fronts == [conditions.face_seed_for(0)]
    z = sitk.GetArrayFromImage(faced.image)
    assert x[b].tobytes() == z[b].tobytes()
    # ... and for the decoded tissue next to the brain to continue the brain's edge (cpmae.seam)
    bundle.manifest["sampler"] = {"brain_edge_voxels": 2.0}
    edged = deidentify(img, mask, bundle=bundle, steps=1, seed=0, mask_limits={"min_cm3": 1})
    e = sitk.GetArrayFromImage(edged.image)
    assert edged.info["brain_edge_voxels"] == 2.0 and res[0].info["brain_edge_voxels"] == 0.0
    assert x[b].tobytes() == e[b].tobytes() and not np.array_equal(e, y)
    # ... and for the face to turn with the brain: one registration, handed on to the self-check
    from cpmae import pose

    frames = []
    turned = (None, sitk.Euler3DTransform((0, 0, 0), 0.2, 0.0, 0.0))

    def fake_frame(image, brain):
        frames.append(1)
        return turned

    monkeypatch.setattr(pose, "brain_frame", fake_frame)
    rotations = []
    monkeypatch.setattr(conform, "face_front", lambda seed, brain, ref, rotation=None: rotations.append(rotation)
                        or np.full((brain.shape[0], brain.shape[2]), 2.0))
    bundle.manifest["sampler"] = {"face_surface": True, "face_pose": True}
    posed = deidentify(img, mask, bundle=bundle, steps=1, seed=0, mask_limits={"min_cm3": 1})
    assert frames == [1] and posed.brain_frame is turned and posed.info["face_pose"] == "brain"
    assert np.allclose(rotations[0], np.asarray(turned[1].GetMatrix()).reshape(3, 3))
    assert faced.brain_frame is None and faced.info["face_pose"] == "grid"


def test_warm_start_from_a_bundle_when_the_run_has_no_checkpoint(tmp_path):
    """A machine may be replaced between days of work: a run without checkpoints starts from the
    last committed bundle's weights, and refuses a bundle of another architecture."""
    from cpmae.errors import InputError
    from cpmae.weights import load_bundle, save_bundle

    torch.manual_seed(0)
    tok = build("tokenizer", dict(TINY2_TOK, in_size=128))
    model = dict(TINY2_PRIOR, codebook_size=12800, levels=LEVELS, token_size=8)
    prior = build("prior", model)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.25)  # distinguishable from a fresh initialisation
    bundle = save_bundle(tmp_path / "b", tok, tok, prior, 128, {"training_data": "none"}, half=False)
    tokens = write_tokens2(tmp_path / "tok")
    cfg = prior2_config(tokens, steps=0, init_from=str(bundle))
    train(cfg, tmp_path / "warm")
    from safetensors.torch import load_file

    got = load_file(str(latest_checkpoint(tmp_path / "warm") / "model.safetensors"))
    want = load_bundle(bundle, 128).prior.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    old = save_bundle(tmp_path / "arch1", build("tokenizer", dict(TINY_TOKENIZER, in_size=128)),
                      build("tokenizer", dict(TINY_TOKENIZER, in_size=128)),
                      build("prior", dict(TINY_PRIOR)), 128, {"training_data": "none"})
    with pytest.raises(InputError, match="another architecture"):
        train(prior2_config(tokens, steps=0, init_from=str(old)), tmp_path / "wrong")


def test_evaluate_reports_round_trip_metrics(tmp_path, monkeypatch):
    """The held-out evaluation runs on a bundle (here random, on a phantom subject, no renders)."""
    from cpmae import cohort
    from cpmae.conditions import grid_reference
    from cpmae.train.evaluate import evaluate_bundle
    from cpmae.weights import save_bundle

    img, brain = phantom_arrays(128)

    def fake_subject(index, grid, seed=0):
        return cohort.Subject(img * 1000.0, brain, "phantom", {}, grid_reference(img.shape, 2.0))

    monkeypatch.setattr(cohort, "generate_subject", fake_subject)
    torch.manual_seed(0)
    tok = build("tokenizer", dict(TINY2_TOK, in_size=128))
    prior = build("prior", dict(TINY2_PRIOR, codebook_size=12800, levels=LEVELS, token_size=32))
    bundle = save_bundle(tmp_path / "b", tok, tok, prior, 128, {"training_data": "none"})
    res = evaluate_bundle(bundle, 128, 5, [0], render=False)
    s = res["summary"]
    assert res["architecture"] == 2 and np.isfinite(s["face_psnr_db"]) and s["skin_distance_mm"] >= 0


def test_face_shape_maps_of_a_random_face_follow_the_brain():
    from cpmae.conditions import face_seed_for, face_shape_maps, grid_reference

    img, brain = phantom_arrays(128)
    ref = grid_reference(brain.shape, 2.0)
    a = face_shape_maps(face_seed_for(0), brain, ref, 4)
    b = face_shape_maps(face_seed_for(1), brain, ref, 4)
    assert a.shape == (2, 32, 32, 32) and a[0].max() == 1.0 and not np.array_equal(a, b)
    ys = np.nonzero(a[0].any(axis=(0, 2)))[0]
    brain_y = np.nonzero(brain.any(axis=(0, 2)))[0]
    assert ys.min() * 4 < brain_y.min()  # the face surface lies in front of the brain (low y)


def test_training_shape_maps_sit_on_the_subjects_own_skin():
    """Training maps follow the skin the decoder must draw, not the MakeHuman surface the cohort
    only partly reached (the prior ignored maps 8–11 mm off the skin): a face patch placed 5 voxels
    inside a ball head is moved onto the ball's surface, and only near where the patch was."""
    from scipy import ndimage

    from cpmae.conditions import skin_points

    n, r = 64, 24
    zz, yy, xx = np.mgrid[:n, :n, :n]
    head = (zz - 32) ** 2 + (yy - 32) ** 2 + (xx - 32) ** 2 <= r * r
    image = np.where(head, 1.0, 0.0).astype(np.float32)
    # a patch of the face plane at y = 32 - r + 5 (inside the head), z, x within ±6 of the centre
    pz, px = np.meshgrid(np.arange(26, 39), np.arange(26, 39), indexing="ij")
    patch = np.stack([pz.ravel(), np.full(pz.size, 32 - r + 5), px.ravel()], 1).astype(float)
    pts = skin_points(patch, image)
    assert len(pts) >= len(patch) // 2
    dist_out = ndimage.distance_transform_edt(head)  # distance to air, inside the head
    p = pts.astype(int)
    assert dist_out[p[:, 0], p[:, 1], p[:, 2]].max() <= 1.0  # on the skin
    assert pts[:, 1].max() < 32 - r + 6 and np.abs(pts[:, [0, 2]] - 32).max() <= 9  # only the face patch's part
    assert len(skin_points(np.zeros((0, 3)), image)) == 0
