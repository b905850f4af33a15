"""Training settings: one flat, documented record, loaded from YAML and overridden by flags.

A researcher edits a YAML file (``cpmae/configs/*.yaml`` are the presets), the command line
overrides single keys, and the merged result is written next to every checkpoint so that any
run can be reproduced or resumed from its own folder alone.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import yaml

from cpmae.errors import InputError
from cpmae.geometry import DEFAULT_RESOLUTION

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class TrainConfig:
    """Everything a training run needs besides its output folder."""

    task: str = "tokenizer"  # tokenizer | prior
    part: str = "nonbrain"  # tokenizer only: brain (B·x) | nonbrain ((1-B)·x)
    resolution: int = DEFAULT_RESOLUTION  # model grid: a key of geometry.GRIDS
    # optimisation
    steps: int = 1000
    batch_size: int = 1  # global (effective) batch; split evenly over DDP ranks
    micro_batch: int = 0  # samples per forward pass; gradients accumulate up to batch_size (0 = all at once)
    lr: float = 2e-4
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine | linear | constant (after linear warm-up)
    budget_schedule: bool = False  # with max_minutes: decay by elapsed share of the budget too (time
    # before a --resume counts: max_minutes is the run's total budget across resumes)
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    adam_eps: float = 1e-8  # Adam's epsilon; larger values damp updates of near-zero gradients
    grad_clip: float = 1.0  # max global L2 norm; 0 disables
    # tokenizer data and loss
    crop: int = 128  # cube side of training crops on the model grid (0 = whole volume)
    face_bias: float = 0.8  # nonbrain: share of crops centred on non-brain head tissue
    flip_prob: float = 0.5  # left-right flip augmentation
    ssim_weight: float = 0.5  # loss = L1 + ssim_weight * (1 - SSIM3D)
    # nonbrain: extra L1 weight on the band of band_voxels outside the brain. That band is what deepbet
    # and tissue classes look at next to the kept brain of an output (docs/training.md, "Seventh look")
    band_weight: float = 0.0
    band_voxels: int = 4
    band_bias: float = 0.0  # nonbrain: share of crops centred on the brain's edge (drawn before face_bias)
    freeze_encoder: bool = False  # tokenizer: train the decoder only, so the tokens (and a prior trained
    # on them) stay valid; pair with init_from
    # prior
    clean_weight: float = 0.3  # Paella v3 loss weight of tokens that were not replaced
    token_crop: int = 0  # prior: train on token_crop³ windows of the token grid (0 = whole grid)
    full_grid_fraction: float = 0.0  # prior: the last share of the steps trains on whole token grids
    val_render: bool = False  # prior: at each validation, remodel held-out subject 0 and render it
    val_render_steps: int = 8  # sampler steps for that render
    brain_tokenizer: str = ""  # run folder or weights bundle, for on-the-fly token pairs
    nonbrain_tokenizer: str = ""
    # data: "cohort" (the generated cohort) or a folder written by `cpmae prepare` / `cpmae encode`
    data: str = "cohort"
    cohort_seed: int = 0
    cohort_size: int = 64  # distinct training subjects (generated or first N prepared cases)
    cache_subjects: int = 4  # subjects kept in memory
    samples_per_subject: int = 1  # consecutive samples (crops) drawn from one subject
    subject_cache: str = "auto"  # generated subjects on disk: auto (~/.cache/cpmae/train-cohort) | none | folder
    val_subjects: int = 2  # held-out subjects, never trained on
    init_from: str = ""  # weights bundle (folder or shipped name) to start from when the run has no checkpoint
    # model overrides (keys of TokenizerConfig / PriorConfig)
    model: Dict[str, Any] = field(default_factory=dict)
    # bookkeeping
    seed: int = 0
    log_every: int = 1
    val_every: int = 100  # 0 disables validation
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    max_minutes: float = 0.0  # wall-time budget; 0 = none. The run stops cleanly and checkpoints.
    # speed
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | bf16 (autocast) | auto (bf16 where the CPU/GPU supports it)
    compile: bool = False
    activation_checkpointing: bool = False
    channels_last: bool = False
    threads: int = 0  # torch intra-op threads; 0 = leave torch's default

    def validate(self, path: Optional[Path] = None) -> "TrainConfig":
        """Reject settings that cannot work, with one clear line."""
        def bad(msg):
            raise InputError(msg, path=path)

        if self.task not in ("tokenizer", "prior"):
            bad(f"task must be tokenizer or prior, not {self.task!r}")
        if self.part not in ("brain", "nonbrain"):
            bad(f"part must be brain or nonbrain, not {self.part!r}")
        from cpmae.geometry import GRIDS

        if self.resolution not in GRIDS:
            bad(f"resolution must be one of {sorted(GRIDS)}, not {self.resolution}")
        if self.steps < 0 or self.batch_size < 1:
            bad("steps must be >= 0 and batch_size >= 1")
        if self.schedule not in ("cosine", "linear", "constant"):
            bad(f"schedule must be cosine, linear or constant, not {self.schedule!r}")
        if self.precision not in ("fp32", "bf16", "auto"):
            bad(f"precision must be fp32, bf16 or auto, not {self.precision!r}")
        if self.micro_batch < 0 or (self.micro_batch and self.batch_size % self.micro_batch):
            bad(f"micro_batch must be 0 or divide batch_size ({self.batch_size}), not {self.micro_batch}")
        if not 0.0 <= self.full_grid_fraction <= 1.0:
            bad(f"full_grid_fraction must be between 0 and 1, not {self.full_grid_fraction}")
        if self.crop < 0 or self.crop > self.resolution:
            bad(f"crop must be between 0 and the resolution ({self.resolution}), not {self.crop}")
        if self.token_crop < 0 or self.token_crop % 4:
            bad(f"token_crop must be 0 or a multiple of 4, not {self.token_crop}")
        if self.cohort_size < 1:
            bad("cohort_size must be >= 1")
        if self.band_weight < 0 or self.band_voxels < 1 or not 0.0 <= self.band_bias <= 1.0:
            bad("band_weight must be >= 0, band_voxels >= 1 and band_bias between 0 and 1")
        if (self.band_weight or self.band_bias) and (self.task != "tokenizer" or self.part != "nonbrain"):
            bad("band_weight and band_bias are for the nonbrain tokenizer (the band lies outside the brain)")
        if self.freeze_encoder and (self.task != "tokenizer" or not self.init_from):
            bad("freeze_encoder is for tokenizer runs that start from a bundle (init_from): a random "
                "encoder kept frozen would make codes no prior was trained on")
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any], path: Optional[Path] = None) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown training setting(s): {', '.join(unknown)}", path=path)
        return cls(**d).validate(path)

    def save(self, path: Path) -> None:
        """Write the config as YAML (atomically: temp file in the same folder, then rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False), encoding="utf-8")
        tmp.replace(path)


def preset_path(task: str, resolution: int) -> Path:
    """The shipped default config for a task and grid, e.g. ``configs/tokenizer-256.yaml``."""
    return CONFIG_DIR / f"{task}-{resolution}.yaml"


def read_yaml(path: Path) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise InputError("config file not found", path=path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML ({str(exc).splitlines()[0]})", path=path) from None
    if not isinstance(data, dict):
        raise InputError("config must be a mapping of setting: value", path=path)
    return data


def resolve_config(task: str, overrides: Dict[str, Any], config_file: Optional[Path] = None) -> TrainConfig:
    """Defaults < shipped preset for (task, resolution) < ``config_file`` < command-line flags.

    ``overrides`` holds only the flags the user actually gave (None values are ignored).
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    merged: Dict[str, Any] = {"task": task}
    user = read_yaml(config_file) if config_file else {}
    resolution = overrides.get("resolution", user.get("resolution", TrainConfig.resolution))
    preset = preset_path(task, int(resolution))
    if preset.is_file():
        merged.update(read_yaml(preset))
    merged.update(user)
    model = dict(merged.get("model") or {})
    model.update(overrides.pop("model", {}) or {})
    merged.update(overrides)
    merged["model"] = model
    merged["task"] = task
    return TrainConfig.from_dict(merged, path=config_file)
