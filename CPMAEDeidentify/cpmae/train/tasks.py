"""What is trained: a tokenizer (one part of the head) or the conditional token prior.

Each task builds its model, turns a list of global sample indices into a batch, computes the
loss, and validates on held-out subjects. The generic loop in ``loop.py`` does the rest
(optimiser, schedule, DDP, checkpoints, logs), so both tasks resume and shard identically.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from cpmae.errors import InputError
from cpmae.geometry import GRIDS
from cpmae.models.build import build, complete
from cpmae.train import data as D
from cpmae.train.config import TrainConfig
from cpmae.train.losses import codebook_stats, psnr, reconstruction_loss, ssim3d

VAL_SALT = 99  # validation crops / noise use their own random stream
VAL_NOISE_LEVELS = (0.3, 0.6, 0.9)


def cohort_seeds(cfg: TrainConfig) -> List[int]:
    """Cohort seeds a run trains on (recorded in checkpoints and bundle manifests)."""
    return [int(cfg.cohort_seed)] if cfg.data == "cohort" else []


def subject_source(cfg: TrainConfig) -> D.SubjectSource:
    if cfg.data == "cohort":
        disk = {"auto": D.default_disk_cache(), "none": None, "": None}.get(cfg.subject_cache, cfg.subject_cache)
        return D.cohort_source(cfg.resolution, cfg.cohort_seed, cfg.cohort_size, cfg.val_subjects,
                               cfg.cache_subjects, None if disk is None else Path(disk))
    return D.prepared_source(cfg.data, cfg.resolution, cfg.cohort_size, cfg.val_subjects, cfg.cache_subjects)


class TokenizerTask:
    """Autoencoder of B·x (brain) or (1-B)·x (non-brain) with an FSQ bottleneck; L1 + SSIM loss."""

    def __init__(self, cfg: TrainConfig, source: Optional[D.SubjectSource] = None):
        self.cfg = cfg
        self.model_config = complete("tokenizer", dict(cfg.model, in_size=cfg.resolution))
        self.cohort_seeds = cohort_seeds(cfg)
        self.align = cfg.resolution // self.model_config["token_size"]
        if cfg.crop and cfg.crop % self.align:
            raise InputError(f"crop {cfg.crop} must be a multiple of {self.align} (voxels per token)")
        self.source = source or subject_source(cfg)
        self.data_description = self.source.description

    def build(self) -> torch.nn.Module:
        model = build("tokenizer", self.model_config)
        if self.cfg.freeze_encoder:  # the decoder learns; every input keeps its tokens
            for name, p in model.named_parameters():
                if name.startswith("enc_"):
                    p.requires_grad_(False)
        return model

    def _sample(self, vol: D.Volume, rng: np.random.Generator, flip: float) -> np.ndarray:
        c = self.cfg
        band = c.band_voxels if c.band_weight else 0
        return D.tokenizer_sample(vol, c.part, c.crop, self.align, c.face_bias, flip, rng, band, c.band_bias)

    @staticmethod
    def _band_l1(recon: torch.Tensor, x: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
        """Mean absolute error over the band voxels of the batch (0 when a batch has none)."""
        return ((recon.float() - x.float()).abs() * band).sum() / band.sum().clamp(min=1.0)

    def batch(self, indices: List[int], device) -> torch.Tensor:
        c = self.cfg
        xs = []
        for i in indices:
            vol = self.source.train(D.subject_for_sample(i, self.source.n_train, c.seed, c.samples_per_subject))
            xs.append(self._sample(vol, D.sample_rng(i, c.seed), c.flip_prob))
        return torch.from_numpy(D.stack(xs)).to(device)

    def loss(self, model, x: torch.Tensor):
        band = x[:, 1:] if x.shape[1] > 1 else None
        x = x[:, :1]
        recon, tokens, _ = model(x)
        loss = reconstruction_loss(recon, x, self.cfg.ssim_weight)
        if band is None:
            return loss, {}
        band_l1 = self._band_l1(recon, x, band)
        return loss + self.cfg.band_weight * band_l1, {"band_l1": float(band_l1.detach())}

    @torch.no_grad()
    def validate(self, model, device) -> Dict[str, float]:
        if self.source.n_val == 0:
            return {}
        xs, recons, toks = [], [], []
        for j in range(self.source.n_val):
            x = torch.from_numpy(self._sample(self.source.val(j), D.sample_rng(j, self.cfg.seed, VAL_SALT), 0.0))
            recon, tokens, _ = model(x[None, :1].to(device))
            xs.append(x[None]), recons.append(recon.float().cpu()), toks.append(tokens.cpu())
        x, recon, tokens = torch.cat(xs), torch.cat(recons), torch.cat(toks)
        band, x = (x[:, 1:] if x.shape[1] > 1 else None), x[:, :1]
        out = {"val_l1": float((recon - x).abs().mean()), "val_psnr": psnr(recon, x),
               "val_ssim": float(ssim3d(recon, x))}
        if band is not None:
            out["val_band_l1"] = float(self._band_l1(recon, x, band))
        out.update({f"val_{k}": v for k, v in codebook_stats(tokens, model.codebook_size).items()})
        return out


class PriorTask:
    """Paella-style denoising of non-brain tokens conditioned on the aligned brain tokens.

    Architecture 2 also gets the condition maps (``cpmae.conditions``) and the crop's position;
    crops are centred, with probability ``face_bias``, on a non-air token in front of the brain,
    where air is every code that stands for empty space (``air_codes``), not just the commonest.
    The last ``full_grid_fraction`` of the steps trains on whole token grids (global coherence).
    """

    def __init__(self, cfg: TrainConfig, pairs=None, device: str = "cpu"):
        self.cfg = cfg
        self.tokenizers = None  # (brain, nonbrain, subject source) when encoding on the fly
        self.pairs = pairs or self._pairs(cfg, device)
        model = dict(cfg.model)
        model.setdefault("arch", self.pairs.arch)
        model.update(codebook_size=self.pairs.codebook_size, token_size=self.pairs.token_size)
        if int(model["arch"]) >= 2:
            if not self.pairs.levels:
                raise InputError("an architecture-2 prior needs token pairs from architecture-2 tokenizers "
                                 "(FSQ levels and condition maps); re-encode with `cpmae encode`", path=cfg.data)
            model["levels"] = tuple(self.pairs.levels)
        self.model_config = complete("prior", model)
        self.arch = int(self.model_config["arch"])
        self.data_description = self.pairs.description
        self.cohort_seeds = self.pairs.cohort_seeds or cohort_seeds(cfg)

    def _pairs(self, cfg: TrainConfig, device: str):
        from cpmae.train import tokens as T

        if cfg.data != "cohort" and T.is_token_folder(cfg.data):
            return T.folder_pairs(cfg.data, cfg.resolution, cfg.cohort_size, cfg.val_subjects)
        if not (cfg.brain_tokenizer and cfg.nonbrain_tokenizer):
            raise InputError("the prior needs token pairs: give --data a folder from `cpmae encode`, "
                             "or --brain-tokenizer and --nonbrain-tokenizer (run folders)")
        brain, nonbrain = load_tokenizer(cfg.brain_tokenizer, device), load_tokenizer(cfg.nonbrain_tokenizer, device)
        for name, tok in (("brain", brain), ("nonbrain", nonbrain)):
            if tok.cfg.in_size != cfg.resolution:
                raise InputError(f"{name} tokenizer is for the {tok.cfg.in_size}³ grid, not {cfg.resolution}³",
                                 path=getattr(cfg, f"{name}_tokenizer"))
        subjects = subject_source(cfg)
        self.tokenizers = (brain, nonbrain, subjects)
        return T.encoded_pairs(subjects, brain, nonbrain, device, cohort_seeds(cfg))

    def build(self) -> torch.nn.Module:
        return build("prior", self.model_config)

    def air_codes(self, nonbrain: np.ndarray) -> np.ndarray:
        """Codes that stand for empty space: architecture 2 has one (clean air); for architecture 1,
        every code making up ≥ 2 % of the grid's outer shell (air surrounds the head) plus the
        commonest code (the zero input inside the brain)."""
        if self.arch >= 2:
            from cpmae.models.tokenizer import AIR

            return np.array([AIR])
        shell = np.concatenate([nonbrain[[0, -1]].ravel(), nonbrain[:, [0, -1]].ravel(), nonbrain[:, :, [0, -1]].ravel()])
        counts = np.bincount(shell, minlength=self.pairs.codebook_size)
        codes = set(np.nonzero(counts >= 0.02 * len(shell))[0].tolist())
        codes.add(int(np.bincount(nonbrain.ravel()).argmax()))
        return np.array(sorted(codes))

    def face_cells(self, pair) -> np.ndarray:
        """[N,3] non-air token cells in front of the brain's centre (the face is at low y on the
        model grid, ``cpmae.geometry``); all non-air cells when there are none."""
        brain, nonbrain, cond = pair
        tissue = ~np.isin(nonbrain, self.air_codes(nonbrain))
        in_brain = cond[0] > 0 if cond is not None else brain != np.bincount(brain.ravel()).argmax()
        ys = np.nonzero(in_brain.any(axis=(0, 2)))[0]
        face = tissue.copy()
        if len(ys):
            face[:, int(ys.mean()):, :] = False
        cells = np.argwhere(face)
        return cells if len(cells) else np.argwhere(tissue)

    def full_grid(self, index: int) -> bool:
        """Whether global sample ``index`` belongs to the final whole-grid phase."""
        c = self.cfg
        return c.full_grid_fraction > 0 and index // c.batch_size >= c.steps * (1.0 - c.full_grid_fraction)

    def crop_pair(self, pair, rng: np.random.Generator, full: bool = False):
        """A ``token_crop``³ window of a pair -> (brain, nonbrain, cond, origin [3])."""
        k = self.cfg.token_crop
        brain, nonbrain, cond = pair
        if full or not k or k >= max(nonbrain.shape):
            return brain, nonbrain, cond, np.zeros(3, np.int64)
        centre = rng.integers(0, nonbrain.shape)
        if rng.random() < self.cfg.face_bias:
            cells = self.face_cells(pair)
            if len(cells):
                centre = cells[rng.integers(len(cells))]
        z, y, x = D.window_corner(centre, nonbrain.shape, k, 1)
        win = (slice(z, z + k), slice(y, y + k), slice(x, x + k))
        return (brain[win], nonbrain[win], None if cond is None else cond[(slice(None),) + win],
                np.array([z, y, x], np.int64))

    def _noised(self, item, rng: np.random.Generator, t: Optional[float] = None, drop: Optional[bool] = None):
        from cpmae.noising import renoise

        brain, target, cond, origin = item
        brain, target = torch.from_numpy(np.ascontiguousarray(brain)), torch.from_numpy(np.ascontiguousarray(target))
        t = float(rng.random()) if t is None else t
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        noisy, replaced = renoise(target[None], torch.tensor([t]), self.pairs.codebook_size, generator=gen)
        training = drop is None  # validation passes drop explicitly and keeps every map
        if drop is None:
            drop = rng.random() < self.model_config["cond_dropout"]
        n_cond = self.model_config.get("cond_channels", 0) + self.model_config.get("shape_channels", 0)
        if cond is None or self.arch < 2:
            cond = torch.zeros((0,) + tuple(target.shape))
        else:
            if cond.shape[0] < n_cond:
                raise InputError(f"the prior wants {n_cond} condition maps, the token pairs have {cond.shape[0]} "
                                 "(face-shape maps come from `cpmae encode` on a cohort with faces)", path=self.cfg.data)
            cond = torch.from_numpy(np.array(cond[:n_cond], dtype=np.float32))
            if training and self.model_config.get("shape_channels", 0) and \
                    rng.random() < self.model_config["shape_dropout"]:
                cond[self.model_config["cond_channels"]:] = 0  # shape dropout: the prior must also work alone
        if drop:
            brain = torch.full_like(brain, self.pairs.codebook_size)  # the prior's "no condition" index
            cond = torch.zeros_like(cond)
        return noisy[0], brain, torch.tensor(t, dtype=torch.float32), target, replaced[0], cond, torch.from_numpy(origin)

    def batch(self, indices: List[int], device):
        c = self.cfg
        items = []
        for i in indices:
            rng = D.sample_rng(i, c.seed)
            pair = self.pairs.train(D.subject_for_sample(i, self.pairs.n_train, c.seed, c.samples_per_subject))
            items.append(self._noised(self.crop_pair(pair, rng, self.full_grid(i)), rng))
        return tuple(torch.stack(parts).to(device) for parts in zip(*items))

    def _forward(self, model, noisy, brain, t, cond, origin):
        if self.arch >= 2:
            return model(noisy, brain, t, cond=cond, origin=origin)
        return model(noisy, brain, t)

    def loss(self, model, batch):
        noisy, brain, t, target, replaced, cond, origin = batch
        logits = self._forward(model, noisy, brain, t, cond, origin)
        bare = model.module if hasattr(model, "module") else model
        bare = getattr(bare, "_orig_mod", bare)
        # mean of per-sample losses: DDP shards then average to exactly the global-batch loss
        per_sample = [bare.loss(logits[k:k + 1], target[k:k + 1], replaced[k:k + 1], self.cfg.clean_weight)
                      for k in range(len(t))]
        return torch.stack(per_sample).mean(), {}

    @torch.no_grad()
    def validate(self, model, device) -> Dict[str, float]:
        """Held-out NLL (nats per token) and accuracy on replaced tokens, with and without the
        brain condition, and on replaced tissue (non-air) tokens, where the face is."""
        if self.pairs.n_val == 0:
            return {}
        out: Dict[str, float] = {}
        for cond_on in (True, False):
            nll, correct, count, nll_tissue, count_tissue = 0.0, 0, 0, 0.0, 0
            for j in range(self.pairs.n_val):
                rng = D.sample_rng(j, self.cfg.seed, VAL_SALT)
                pair = self.pairs.val(j)
                tissue = torch.from_numpy(~np.isin(pair[1], self.air_codes(pair[1])))
                for t in VAL_NOISE_LEVELS:
                    item = self._noised(self.crop_pair(pair, rng, full=True), rng, t, drop=not cond_on)
                    noisy, brain, tt, target, replaced, cond, origin = (v[None].to(device) for v in item)
                    logits = self._forward(model, noisy, brain, tt, cond, origin).float()
                    ce = model.token_nll(logits, target)[0].cpu()
                    rep = replaced[0].cpu()
                    nll += float(ce[rep].sum())
                    correct += int((model.argmax(logits)[0].cpu() == target[0].cpu())[rep].sum())
                    count += int(rep.sum())
                    nll_tissue += float(ce[rep & tissue].sum())
                    count_tissue += int((rep & tissue).sum())
            key = "" if cond_on else "_uncond"
            out[f"val_nll{key}"] = nll / max(count, 1)
            out[f"val_token_acc{key}"] = correct / max(count, 1)
            out[f"val_nll_tissue{key}"] = nll_tissue / max(count_tissue, 1)
        return out

    @torch.no_grad()
    def render_sample(self, model, device, path: Path) -> Optional[Path]:
        """Remodel held-out subject 0 with the prior being trained and render before/after faces.

        Needs the tokenizers (on-the-fly pairs) and a subject with voxels; the picture shows a
        training-data face, so it stays in the run folder.
        """
        if self.tokenizers is None or self.pairs.n_val == 0:
            return None
        from cpmae.render import before_after_figure
        from cpmae.sampler import sample_nonbrain_tokens

        brain_tok, nonbrain_tok, subjects = self.tokenizers
        vol = subjects.val(0)
        brain, _, cond = self.pairs.val(0)
        brain_tokens = torch.from_numpy(brain)[None].to(device)
        cond_t = torch.from_numpy(cond)[None].to(device) if self.arch >= 2 and cond is not None else None
        tokens = sample_nonbrain_tokens(model, brain_tokens, steps=self.cfg.val_render_steps, seed=self.cfg.seed,
                                        cond=cond_t)
        decoded = nonbrain_tok.decode(tokens.to(device))[0, 0].float().cpu().numpy()
        b = vol.brain.astype(np.float32)
        remodeled = np.clip(b * vol.image + (1.0 - b) * decoded, 0, None)
        spacing = (GRIDS[self.cfg.resolution].spacing,) * 3
        return before_after_figure((vol.image, spacing), (remodeled, spacing), path,
                                   labels=("held-out subject", "remodeled"))[0]


def load_tokenizer(path: str, device: str = "cpu") -> torch.nn.Module:
    """A trained tokenizer from a run/checkpoint folder."""
    from cpmae.train.checkpoint import load_trained_model

    model, cfg, _ = load_trained_model(path, device)
    if cfg.task != "tokenizer":
        raise InputError(f"not a tokenizer run (task is {cfg.task})", path=path)
    return model


def make_task(cfg: TrainConfig, device: str = "cpu"):
    return TokenizerTask(cfg) if cfg.task == "tokenizer" else PriorTask(cfg, device=device)
