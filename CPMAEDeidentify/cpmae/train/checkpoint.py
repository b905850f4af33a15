"""Checkpoints that let a killed run continue exactly, without pickle.

A checkpoint is a folder ``RUN/checkpoints/step-0000123/`` holding
- ``model.safetensors``: the weights (what ``cpmae export`` and ``cpmae encode`` read),
- ``optimizer.pt``: optimizer state, tensors and numbers only, read back with
  ``torch.load(weights_only=True)`` (no code is ever unpickled),
- ``state.json``: step, samples consumed, elapsed time, Python/NumPy RNG states, model config,
- ``config.yaml``: the full training config of the run.
It is written to a hidden temp folder and renamed, and ``RUN/checkpoints/latest`` names the
newest complete one, so a kill at any moment leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from cpmae.errors import InputError
from cpmae.train.config import TrainConfig, read_yaml

CHECKPOINTS = "checkpoints"
LATEST = "latest"


def rng_state() -> Dict[str, Any]:
    """Python and NumPy global RNG states as JSON; torch's as a tensor (goes in optimizer.pt)."""
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }


def set_rng_state(state: Dict[str, Any], torch_state: Optional[torch.Tensor],
                  cuda_state: Optional[torch.Tensor] = None) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    if torch_state is not None:
        torch.set_rng_state(torch_state)
    if cuda_state is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_state)


def model_state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """state_dict of the bare model (no DDP ``module.`` / compile ``_orig_mod.`` prefixes), contiguous."""
    bare = unwrap(model)
    return {k: v.detach().contiguous().cpu() for k, v in bare.state_dict().items()}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    config: TrainConfig, state: Dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically, point ``latest`` at it, keep the newest ``keep``."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(model_state(model), str(tmp / "model.safetensors"))
    extra = {"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        extra["cuda_rng"] = torch.cuda.get_rng_state()
    torch.save(extra, tmp / "optimizer.pt")
    record = dict(state, step=step, rng=rng_state())
    (tmp / "state.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    config.save(tmp / "config.yaml")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(final.name + "\n", encoding="utf-8")
    pointer.replace(root / LATEST)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[: -max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint of a run, or None if it has none."""
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        path = root / pointer.read_text(encoding="utf-8").strip()
        if (path / "state.json").is_file():
            return path
    done = sorted(p for p in root.glob("step-*") if (p / "state.json").is_file())
    return done[-1] if done else None


def find_checkpoint(path: Path) -> Path:
    """Accept a run folder or a checkpoint folder; return the checkpoint folder."""
    path = Path(path)
    if (path / "state.json").is_file() and (path / "model.safetensors").is_file():
        return path
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise InputError("no checkpoint found (expected a training run folder or a checkpoint folder)", path=path)
    return ckpt


def read_state(ckpt: Path) -> Dict[str, Any]:
    return json.loads((Path(ckpt) / "state.json").read_text(encoding="utf-8"))


def load_checkpoint(ckpt: Path, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer],
                    map_location: str = "cpu") -> Dict[str, Any]:
    """Restore weights (and optimizer + RNG states when ``optimizer`` is given); return state.json."""
    ckpt = Path(ckpt)
    unwrap(model).load_state_dict(load_file(str(ckpt / "model.safetensors"), device=map_location))
    state = read_state(ckpt)
    if optimizer is not None:
        extra = torch.load(ckpt / "optimizer.pt", map_location=map_location, weights_only=True)
        optimizer.load_state_dict(extra["optimizer"])
        set_rng_state(state["rng"], extra["torch_rng"].cpu(), extra.get("cuda_rng"))
    return state


def load_trained_model(path: Path, device: str = "cpu") -> Tuple[torch.nn.Module, TrainConfig, Dict[str, Any]]:
    """Rebuild a trained model from a run or checkpoint folder: (model in eval mode, config, state)."""
    from cpmae.models.build import build

    ckpt = find_checkpoint(path)
    cfg = TrainConfig.from_dict(read_yaml(ckpt / "config.yaml"), path=ckpt / "config.yaml")
    state = read_state(ckpt)
    model = build(cfg.task, state["model_config"])
    load_checkpoint(ckpt, model, None, map_location=device)
    return model.to(device).eval(), cfg, state
