"""What is trained: a tokenizer (one part of the head) or the conditional token prior.

Each task builds its model, turns a list of global sample indices into a batch, computes the
loss, and validates on held-out subjects. The generic loop in ``loop.py`` does the rest
(optimiser, schedule, DDP, checkpoints, logs), so both tasks resume and shard identically.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from cpmae.errors import InputError
from cpmae.train import data as D
from cpmae.train.config import TrainConfig
from cpmae.train.losses import codebook_stats, psnr, reconstruction_loss, ssim3d

VAL_SALT = 99  # validation crops / noise use their own random stream
VAL_NOISE_LEVELS = (0.3, 0.6, 0.9)


def build_model(task: str, model_config: Dict[str, Any]) -> torch.nn.Module:
    from cpmae.models import PriorConfig, TokenPrior, Tokenizer, TokenizerConfig

    if task == "tokenizer":
        return Tokenizer(TokenizerConfig.from_dict(model_config))
    return TokenPrior(PriorConfig.from_dict(model_config))


def subject_source(cfg: TrainConfig) -> D.SubjectSource:
    if cfg.data == "cohort":
        disk = {"auto": D.default_disk_cache(), "none": None, "": None}.get(cfg.subject_cache, cfg.subject_cache)
        return D.cohort_source(cfg.resolution, cfg.cohort_seed, cfg.cohort_size, cfg.val_subjects,
                               cfg.cache_subjects, None if disk is None else Path(disk))
    return D.prepared_source(cfg.data, cfg.resolution, cfg.cohort_size, cfg.val_subjects, cfg.cache_subjects)


class TokenizerTask:
    """Autoencoder of B·x (brain) or (1-B)·x (non-brain) with an FSQ bottleneck; L1 + SSIM loss."""

    def __init__(self, cfg: TrainConfig, source: Optional[D.SubjectSource] = None):
        from cpmae.models import TokenizerConfig

        self.cfg = cfg
        self.model_config = TokenizerConfig.from_dict(dict(cfg.model, in_size=cfg.resolution)).to_dict()
        self.align = cfg.resolution // self.model_config["token_size"]
        if cfg.crop and cfg.crop % self.align:
            raise InputError(f"crop {cfg.crop} must be a multiple of {self.align} (voxels per token)")
        self.source = source or subject_source(cfg)
        self.data_description = self.source.description

    def build(self) -> torch.nn.Module:
        return build_model("tokenizer", self.model_config)

    def _sample(self, vol: D.Volume, rng: np.random.Generator, flip: float) -> np.ndarray:
        c = self.cfg
        return D.tokenizer_sample(vol, c.part, c.crop, self.align, c.face_bias, flip, rng)

    def batch(self, indices: List[int], device) -> torch.Tensor:
        c = self.cfg
        xs = []
        for i in indices:
            vol = self.source.train(D.subject_for_sample(i, self.source.n_train, c.seed, c.samples_per_subject))
            xs.append(self._sample(vol, D.sample_rng(i, c.seed), c.flip_prob))
        return torch.from_numpy(D.stack(xs)).to(device)

    def loss(self, model, x: torch.Tensor):
        recon, tokens, _ = model(x)
        loss = reconstruction_loss(recon, x, self.cfg.ssim_weight)
        return loss, {}

    @torch.no_grad()
    def validate(self, model, device) -> Dict[str, float]:
        if self.source.n_val == 0:
            return {}
        xs, recons, toks = [], [], []
        for j in range(self.source.n_val):
            x = torch.from_numpy(self._sample(self.source.val(j), D.sample_rng(j, self.cfg.seed, VAL_SALT), 0.0))
            recon, tokens, _ = model(x[None].to(device))
            xs.append(x[None]), recons.append(recon.float().cpu()), toks.append(tokens.cpu())
        x, recon, tokens = torch.cat(xs), torch.cat(recons), torch.cat(toks)
        out = {"val_l1": float((recon - x).abs().mean()), "val_psnr": psnr(recon, x),
               "val_ssim": float(ssim3d(recon, x))}
        out.update({f"val_{k}": v for k, v in codebook_stats(tokens, model.codebook_size).items()})
        return out


class PriorTask:
    """Paella-style denoising of non-brain tokens conditioned on the aligned brain tokens."""

    def __init__(self, cfg: TrainConfig, pairs=None, device: str = "cpu"):
        from cpmae.models import PriorConfig

        self.cfg = cfg
        self.tokenizers = None  # (brain, nonbrain, subject source) when encoding on the fly
        self.pairs = pairs or self._pairs(cfg, device)
        self.model_config = PriorConfig.from_dict(dict(
            cfg.model, codebook_size=self.pairs.codebook_size, token_size=self.pairs.token_size)).to_dict()
        self.data_description = self.pairs.description

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
        return T.encoded_pairs(subjects, brain, nonbrain, device)

    def build(self) -> torch.nn.Module:
        return build_model("prior", self.model_config)

    def _noised(self, pair, rng: np.random.Generator, t: Optional[float] = None, drop: Optional[bool] = None):
        from cpmae.noising import renoise

        brain, target = (torch.from_numpy(a) for a in pair)
        t = float(rng.random()) if t is None else t
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        noisy, replaced = renoise(target[None], torch.tensor([t]), self.pairs.codebook_size, generator=gen)
        if drop is None:
            drop = rng.random() < self.model_config["cond_dropout"]
        if drop:
            brain = torch.full_like(brain, self.pairs.codebook_size)  # TokenPrior's "no condition" index
        return noisy[0], brain, torch.tensor(t, dtype=torch.float32), target, replaced[0]

    def crop_pair(self, pair, rng: np.random.Generator):
        """A ``token_crop``³ window of a token pair: with probability ``face_bias`` centred on a
        non-brain token that is not the commonest code (air / masked brain), else anywhere."""
        k = self.cfg.token_crop
        brain, nonbrain = pair
        if not k or k >= max(nonbrain.shape):
            return pair
        centre = rng.integers(0, nonbrain.shape)
        if rng.random() < self.cfg.face_bias:
            background = np.bincount(nonbrain.ravel()).argmax()
            busy = np.argwhere(nonbrain != background)
            if len(busy):
                centre = busy[rng.integers(len(busy))]
        z, y, x = D.window_corner(centre, nonbrain.shape, k, 1)
        return brain[z:z + k, y:y + k, x:x + k], nonbrain[z:z + k, y:y + k, x:x + k]

    def batch(self, indices: List[int], device):
        c = self.cfg
        items = []
        for i in indices:
            rng = D.sample_rng(i, c.seed)
            pair = self.pairs.train(D.subject_for_sample(i, self.pairs.n_train, c.seed, c.samples_per_subject))
            items.append(self._noised(self.crop_pair(pair, rng), rng))
        return tuple(torch.stack(parts).to(device) for parts in zip(*items))

    def loss(self, model, batch):
        from cpmae.noising import prior_loss

        noisy, brain, t, target, replaced = batch
        logits = model(noisy, brain, t)
        # mean of per-sample losses: DDP shards then average to exactly the global-batch loss
        per_sample = [prior_loss(logits[k:k + 1], target[k:k + 1], replaced[k:k + 1], self.cfg.clean_weight)
                      for k in range(len(t))]
        return torch.stack(per_sample).mean(), {}

    @torch.no_grad()
    def validate(self, model, device) -> Dict[str, float]:
        if self.pairs.n_val == 0:
            return {}
        import torch.nn.functional as F

        out: Dict[str, float] = {}
        for cond in (True, False):
            nll, correct, count = 0.0, 0, 0
            for j in range(self.pairs.n_val):
                rng = D.sample_rng(j, self.cfg.seed, VAL_SALT)
                for t in VAL_NOISE_LEVELS:
                    noisy, brain, tt, target, replaced = self._noised(self.pairs.val(j), rng, t, drop=not cond)
                    logits = model(noisy[None].to(device), brain[None].to(device), tt[None].to(device)).float().cpu()
                    ce = F.cross_entropy(logits, target[None], reduction="none")[0]
                    nll += float(ce[replaced].sum())
                    correct += int((logits.argmax(1)[0] == target)[replaced].sum())
                    count += int(replaced.sum())
            key = "" if cond else "_uncond"
            out[f"val_nll{key}"] = nll / max(count, 1)
            out[f"val_token_acc{key}"] = correct / max(count, 1)
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
        brain_tokens = torch.from_numpy(self.pairs.val(0)[0])[None].to(device)
        tokens = sample_nonbrain_tokens(model, brain_tokens, steps=self.cfg.val_render_steps, seed=self.cfg.seed)
        decoded = nonbrain_tok.decode(tokens.to(device))[0, 0].float().cpu().numpy()
        b = vol.brain.astype(np.float32)
        remodeled = np.clip(b * vol.image + (1.0 - b) * decoded, 0, None)
        spacing = (256.0 / self.cfg.resolution,) * 3
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
