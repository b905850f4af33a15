"""Weight bundles: safetensors files plus a manifest with sha256, resolution and provenance.

A bundle is a folder holding ``brain_tokenizer.safetensors``, ``nonbrain_tokenizer.safetensors``,
``prior.safetensors`` and ``manifest.json``. Loading never unpickles anything, and every file is
checked against the manifest's sha256 before use, so a corrupted or swapped file is refused
with a clear error instead of producing a silently different face. Shipped demonstration
bundles live in ``cpmae/weights/demo-128`` and ``demo-256``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from safetensors.torch import load_file, save_file

from cpmae import __version__
from cpmae.errors import WeightsError
from cpmae.geometry import DEFAULT_RESOLUTION, GRIDS
from cpmae.hashing import sha256_file
from cpmae.models import Tokenizer
from cpmae.models.build import build, component_kind

FORMAT = "cpmae-weights/1"
COMPONENTS = ("brain_tokenizer", "nonbrain_tokenizer", "prior")
BUILTIN_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_BUNDLE = {size: f"demo-{size}" for size in GRIDS}


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


@dataclass
class Bundle:
    brain_tokenizer: Tokenizer
    nonbrain_tokenizer: Tokenizer
    prior: torch.nn.Module  # TokenPrior (architecture 1) or DigitPrior (2)
    manifest: dict
    path: Path

    @property
    def resolution(self) -> int:
        return int(self.manifest["resolution"])

    @property
    def architecture(self) -> int:
        """1: the 2026-11 demo bundles (run with the hull envelope); 2: local tokenizers, digit prior."""
        return int(self.manifest.get("architecture", 1))

    @property
    def sha256(self) -> str:
        """Identity of the whole bundle: sha256 of its manifest (which pins every file's sha256)."""
        return sha256_file(self.path / "manifest.json")

    def to(self, device) -> "Bundle":
        for m in (self.brain_tokenizer, self.nonbrain_tokenizer, self.prior):
            m.to(device)
        return self


def resolve_bundle_path(spec: Optional[Union[str, Path]], resolution: Optional[int] = None) -> Path:
    """A folder path, the name of a shipped bundle, or None for the default of ``resolution``."""
    if spec is None:
        spec = DEFAULT_BUNDLE.get(int(resolution or DEFAULT_RESOLUTION))
        if spec is None:
            raise WeightsError(f"no shipped weights for resolution {resolution}; use --weights")
    p = Path(spec)
    if p.is_dir():
        return p
    if (BUILTIN_DIR / str(spec)).is_dir():
        return BUILTIN_DIR / str(spec)
    if p.is_file() and p.name == "manifest.json":
        return p.parent
    raise WeightsError("weights folder not found (expected a folder with manifest.json, or a shipped "
                       f"bundle name: {', '.join(sorted(DEFAULT_BUNDLE.values()))})", path=spec)


def read_manifest(path: Path) -> dict:
    mf = path / "manifest.json"
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsError("manifest.json missing", path=path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WeightsError(f"manifest.json is not valid JSON ({exc})", path=mf) from None
    except OSError as exc:
        raise WeightsError(f"cannot read manifest.json ({exc.strerror or exc})", path=mf) from None
    if not isinstance(manifest, dict):
        raise WeightsError("manifest.json is not a JSON object", path=mf)
    if manifest.get("format") != FORMAT:
        raise WeightsError(f"unknown weights format {manifest.get('format')!r} (expected {FORMAT})", path=mf)
    check_manifest(manifest, path)
    return manifest


_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_manifest(manifest: dict, path: Path) -> None:
    """Refuse, in one line, a manifest that lacks what loading needs or points outside its bundle.

    Checked before any file is opened: ``resolution`` (a positive integer), and for every
    component a ``file`` inside the bundle folder (no absolute path, no ``..``, no symlink out),
    a 64-hex-digit ``sha256`` and a ``config`` object. A bundle is data from elsewhere: it must
    not make the engine read files outside it.
    """
    mf = path / "manifest.json"
    res = manifest.get("resolution")
    if isinstance(res, bool) or not isinstance(res, int) or res <= 0:
        raise WeightsError(f"manifest.json lacks a valid resolution (found {res!r})", path=mf)
    comps = manifest.get("components")
    if not isinstance(comps, dict):
        raise WeightsError("manifest.json lacks its components", path=mf)
    root = path.resolve()
    for name in COMPONENTS:
        entry = comps.get(name)
        if not isinstance(entry, dict):
            raise WeightsError(f"manifest.json lists no {name}", path=mf)
        f = entry.get("file")
        if not isinstance(f, str) or not f:
            raise WeightsError(f"manifest.json gives no file for {name}", path=mf)
        rel = Path(f)
        try:
            target = (path / rel).resolve()
        except (RuntimeError, OSError):  # a symlink loop
            raise WeightsError(f"cannot read the weights file for {name} (symlink loop)", path=path / rel) from None
        if rel.is_absolute() or ".." in rel.parts or not target.is_relative_to(root):
            raise WeightsError(f"manifest.json points {name} to {f!r}, outside the bundle folder; refusing to "
                               "read it", path=mf)
        if not isinstance(entry.get("sha256"), str) or not _SHA256.fullmatch(entry["sha256"]):
            raise WeightsError(f"manifest.json lacks a valid sha256 for {name}", path=mf)
        if not isinstance(entry.get("config"), dict):
            raise WeightsError(f"manifest.json lacks the config of {name}", path=mf)


def _load_state(path: Path, entry: dict) -> dict:
    f = path / entry["file"]
    if not f.is_file():
        raise WeightsError("weights file listed in manifest.json is missing", path=f)
    try:
        digest = sha256_file(f)
    except OSError as exc:
        raise WeightsError(f"cannot read the weights file ({exc.strerror or exc})", path=f) from None
    if digest != entry["sha256"]:
        raise WeightsError(f"sha256 mismatch: file has {digest[:12]}…, manifest says {entry['sha256'][:12]}…; "
                           "the file is corrupted or was replaced, refusing to use it", path=f)
    try:
        tensors = load_file(str(f))  # safetensors: never unpickles
    except Exception as exc:  # SafetensorError, OSError, ...: the bytes are not a safetensors file
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:120]
        raise WeightsError(f"not a valid safetensors file ({first}); weights are read only from safetensors, "
                           "never unpickled", path=f) from None
    return {k: v.float() for k, v in tensors.items()}


def _weights_errors(load):
    """Turn what a bundle's content can break while the models are built into one WeightsError line.

    A config the model classes reject (TypeError/KeyError/ValueError) or tensors of the wrong
    shape (RuntimeError from ``load_state_dict``) mean the bundle does not fit this engine: exit 4,
    not a traceback. Out-of-memory is not the bundle's fault and passes through.
    """
    import functools

    @functools.wraps(load)
    def wrapper(spec=None, resolution=None, *args, **kwargs):
        try:
            return load(spec, resolution, *args, **kwargs)
        except WeightsError:
            raise
        except torch.cuda.OutOfMemoryError:
            raise
        except (TypeError, KeyError, ValueError, AttributeError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            raise WeightsError(f"the bundle does not fit this version of cpmae ({exc.__class__.__name__}: {first})",
                               path=spec if spec is not None else f"demo weights for {resolution}") from None

    return wrapper


@_weights_errors
def load_bundle(spec: Optional[Union[str, Path]] = None, resolution: Optional[int] = None,
                device: Union[str, torch.device] = "cpu") -> Bundle:
    """Load and verify a bundle; refuse sha256 mismatches and bundles for another resolution."""
    path = resolve_bundle_path(spec, resolution)
    manifest = read_manifest(path)
    if resolution is not None and int(manifest["resolution"]) != int(resolution):
        raise WeightsError(f"these weights are for {manifest['resolution']}³, not {resolution}³; "
                           f"pick --resolution {manifest['resolution']} or other weights", path=path)
    comps = manifest["components"]
    models = {}
    for name in COMPONENTS:
        if name not in comps:
            raise WeightsError(f"manifest.json lists no {name}", path=path)
        entry = comps[name]
        try:
            model = build(component_kind(name), entry["config"])
        except (TypeError, ValueError) as exc:
            raise WeightsError(f"manifest.json: {name} config is not usable ({exc})", path=path) from None
        state = _load_state(path, entry)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise WeightsError(f"{entry['file']} does not fit its config (missing {len(missing)}, "
                               f"unexpected {len(unexpected)} tensors)", path=path)
        models[name] = model.eval().to(device)
        if "code_brightness" in entry:  # precomputed at export (cpmae.constraints)
            import numpy as np

            models[name]._cpmae_code_brightness = np.asarray(entry["code_brightness"], np.float32)
    return Bundle(models["brain_tokenizer"], models["nonbrain_tokenizer"], models["prior"], manifest, path)


def component_state(spec: Union[str, Path], name: str) -> tuple:
    """(config, fp32 state dict) of one component of a bundle, sha256-checked: what a training run
    warm-starts from when its own checkpoints are gone (only the repository carries over)."""
    path = resolve_bundle_path(spec)
    manifest = read_manifest(path)
    entry = manifest["components"].get(name)
    if entry is None:
        raise WeightsError(f"manifest.json lists no {name}", path=path)
    return dict(entry["config"]), _load_state(path, entry)


def save_bundle(out_dir: Union[str, Path], brain_tokenizer: Tokenizer, nonbrain_tokenizer: Tokenizer,
                prior: torch.nn.Module, resolution: int, meta: Optional[dict] = None, half: bool = True,
                keep_files: Optional[Dict[str, Path]] = None) -> Path:
    """Write a bundle atomically (temp folder, then rename). ``half`` stores fp16 to keep the repo small.

    ``keep_files`` maps a component to the stored file of another bundle that holds exactly its
    weights: that file is copied byte for byte, so a kept component keeps its sha256 (safetensors
    writes its metadata in no fixed order, so saving the same weights again can change the hash)."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    comps = {}
    for name, model in (("brain_tokenizer", brain_tokenizer), ("nonbrain_tokenizer", nonbrain_tokenizer),
                        ("prior", prior)):
        fname = f"{name}.safetensors"
        if keep_files and name in keep_files:
            shutil.copyfile(keep_files[name], tmp / fname)
        else:
            state = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).contiguous().cpu()
                     for k, v in model.state_dict().items()}
            save_file(state, str(tmp / fname), metadata={"component": name, "format": FORMAT})
        comps[name] = {"file": fname, "sha256": sha256_file(tmp / fname), "config": model.cfg.to_dict(),
                       "parameters": int(sum(p.numel() for p in model.parameters()))}
    arch = int(getattr(prior.cfg, "arch", 1))
    if arch == 1:
        # which codes decode to air: architecture 1's envelope constraint needs it at every run, so
        # measure it once here, on the stored (possibly fp16-rounded) weights that inference will load
        from cpmae.constraints import code_brightness

        stored = Tokenizer(nonbrain_tokenizer.cfg)
        stored.load_state_dict({k: v.float() for k, v in load_file(str(tmp / "nonbrain_tokenizer.safetensors")).items()})
        comps["nonbrain_tokenizer"]["code_brightness"] = [round(float(v), 5) for v in code_brightness(stored.eval())]
    manifest = {
        "format": FORMAT,
        "name": out.name,
        "architecture": arch,
        "version": __version__,
        "resolution": int(resolution),
        "spacing_mm": GRIDS[int(resolution)].spacing,
        "codebook_size": int(prior.codebook_size),
        "token_grid": int(prior.cfg.token_size),
        "license": "Apache-2.0",
        "git_revision": git_revision(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "components": comps,
    }
    manifest.update(meta or {})
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    # mkdtemp makes a private 0700 folder; a bundle is as shareable as any file the user writes
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    for f in tmp.iterdir():
        os.chmod(f, 0o666 & ~umask)
    if out.exists():
        old = out.with_name(f".{out.name}.old")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out
