"""De-identification of one scan: the whole CP-MAE pipeline, one stage per module.

    scan X ─ brain mask B (deepbet or given) ─ model grid (canonical, 128³@2 mm or 256³@1 mm)
      ─ brain tokens e₁(B·X) ─ sample non-brain tokens Ê₂ ~ H(·|E₁) (seeded) ─ decode d₂(Ê₂)
      ─ back to the native grid ─ Y = (1−B)·decoded + B·X   (brain bit-identical)

Architecture-2 bundles condition the prior on the brain only (tokens + per-cell occupancy,
``cpmae.conditions``); nothing of the patient's outline enters, so the new head's outline is the
model's. Architecture-1 bundles (the 2026-11 demonstration weights) keep running as measured:
with ``envelope`` (default on) CP-GAN's convex-hull envelope of the input head constrains their
sampler (``cpmae.constraints``) and the decoded head is cut to it. ``info["envelope"]`` records
whether the envelope was used.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk
import torch

from cpmae import __version__
from cpmae.blend import blend
from cpmae.device import resolve_device as pick_device  # the name batch and the audit call
from cpmae.geometry import DEFAULT_RESOLUTION
from cpmae.progress import Reporter


@dataclass
class DeidResult:
    image: sitk.Image  # de-identified scan on the input's grid, input dtype
    mask: sitk.Image  # the brain mask used (uint8, input grid)
    timings: dict = field(default_factory=dict)  # stage -> seconds
    info: dict = field(default_factory=dict)  # provenance: weights sha256, seed, steps, changed voxels…
    brain_frame: Optional[tuple] = None  # (reference, transform) when the face was turned with the brain;
    # the self-check's renders reuse it instead of registering the brain again (cpmae.pose.brain_frame)


def deidentify(image: sitk.Image, mask: Optional[sitk.Image] = None, weights=None, resolution: int = DEFAULT_RESOLUTION,
               steps: Optional[int] = None, seed: int = 0, device: str = "auto", envelope: bool = True,
               reporter: Optional[Reporter] = None, bundle=None, mask_limits: Optional[dict] = None,
               source: Optional[Union[str, Path]] = None) -> DeidResult:
    """Remodel everything but the brain of ``image``; see the module docstring.

    ``bundle`` (a loaded ``cpmae.weights.Bundle``) skips loading for repeated calls (batch, audit).
    ``mask_limits`` relaxes the brain-volume plausibility check (e.g. ``{"min_cm3": 1}`` for phantoms).
    ``source`` names the input in error messages.
    """
    from cpmae.brainmask import compute_brain_mask, validate_mask
    from cpmae.geometry import GRIDS, plan_model_grid, to_model, to_native
    from cpmae.intensity import intensity_scale
    from cpmae.sampler import DEFAULT_STEPS, sample_nonbrain_tokens
    from cpmae.weights import load_bundle

    t_start = time.perf_counter()
    reporter = reporter if reporter is not None else Reporter("none")  # fresh: timings are per call
    dev = pick_device(device)
    if bundle is None:
        with reporter.stage("load weights"):
            bundle = load_bundle(weights, resolution, dev)
    else:
        bundle.to(dev)
    resolution = bundle.resolution
    steps = int(steps or bundle.manifest.get("sampler", {}).get("steps", DEFAULT_STEPS))
    sampler = bundle.manifest.get("sampler", {})  # chosen by measurement when the bundle was made
    temperature = float(sampler.get("temperature", 1.0))
    guidance = float(sampler.get("guidance", 1.0))
    if mask is None:
        with reporter.stage("brain mask"):
            mask = compute_brain_mask(image, device=dev, path=source)
    volume_cm3 = validate_mask(mask, path=source, **(mask_limits or {}))

    with reporter.stage("to model grid"):
        ref = plan_model_grid(image, GRIDS[resolution], mask)
        x = to_model(image, ref, "linear")
        b = to_model(mask, ref, "nearest") > 0.5
        scale = intensity_scale(x)
    hull = None
    envelope = bool(envelope) and bundle.architecture == 1  # architecture 2 never copies the outline
    if envelope:
        from cpmae.envelope import head_envelope

        with reporter.stage("head envelope"):
            hull = head_envelope(x, ref.GetSpacing())

    with torch.inference_mode():
        with reporter.stage("encode brain"):
            xb = torch.from_numpy((x * b / scale).astype(np.float32))[None, None].to(dev)
            brain_tokens = bundle.brain_tokenizer.encode(xb)
            del xb
        bias, cond, face_shape_seed, rotation, frame = None, None, None, None, None
        if bundle.architecture >= 2:
            from cpmae.conditions import brain_maps

            factor = bundle.nonbrain_tokenizer.cfg.factor
            maps = brain_maps(b, factor)
            if getattr(bundle.prior.cfg, "shape_channels", 0):
                from cpmae.conditions import face_seed_for, face_shape_maps

                with reporter.stage("face shape"):  # a new face drawn from the CC0 shape model, placed by the brain
                    face_shape_seed = face_seed_for(seed)
                    if sampler.get("face_pose"):  # the bundle's choice: the face turned with the brain
                        from cpmae.pose import brain_frame
                        from cpmae.conform import brain_rotation

                        frame = brain_frame(image, mask)
                        rotation = brain_rotation(frame)
                    maps = np.concatenate([maps, face_shape_maps(face_shape_seed, b, ref, factor, rotation)])
            cond = torch.from_numpy(maps)[None].to(dev)
        if hull is not None:
            from cpmae.constraints import envelope_logit_bias

            with reporter.stage("envelope constraint"):
                bias = envelope_logit_bias(hull, b, bundle.nonbrain_tokenizer)
        nonbrain_tokens = sample_nonbrain_tokens(bundle.prior, brain_tokens, steps=steps, seed=seed,
                                                 temperature=temperature, guidance=guidance, logit_bias=bias,
                                                 reporter=reporter,
                                                 cond=cond)
        with reporter.stage("decode"):
            decoded = np.clip(bundle.nonbrain_tokenizer.decode(nonbrain_tokens)[0, 0].float().cpu().numpy(), 0.0, None)
    face_surface = face_shape_seed is not None and bool(sampler.get("face_surface", False))
    if face_surface:  # the bundle's choice, by measurement: the skin onto the drawn face (cpmae.conform)
        from cpmae.conform import conform_to_face, face_front

        with reporter.stage("face surface"):
            decoded = conform_to_face(decoded, face_front(face_shape_seed, b, ref, rotation), b)
    edge = float(sampler.get("brain_edge_voxels") or 0.0)
    edge_strength = float(sampler.get("brain_edge_strength", 1.0))
    if edge > 0 and edge_strength > 0:  # the bundle's choice, by measurement: no seam at the brain's edge (cpmae.seam)
        from cpmae.seam import continue_brain_edge

        with reporter.stage("brain edge"):
            decoded = continue_brain_edge(decoded, x / scale, b, edge, edge_strength)
    decoded *= scale
    if hull is not None:
        decoded *= hull

    with reporter.stage("blend"):
        decoded_native = to_native(decoded, ref, image, "linear")
        out = blend(image, decoded_native, mask)
        x_native = sitk.GetArrayViewFromImage(image)
        changed = int(np.count_nonzero(sitk.GetArrayViewFromImage(out) != x_native))

    timings = dict(reporter.timings)
    timings["total"] = time.perf_counter() - t_start
    info = {
        "method": "cpmae",
        "version": __version__,
        "weights": bundle.manifest.get("name"),
        "weights_sha256": bundle.sha256,
        "resolution": resolution,
        "steps": steps,
        "seed": int(seed),
        "device": str(dev),
        "envelope": bool(envelope),
        "architecture": bundle.architecture,
        "temperature": temperature,
        "guidance": guidance,
        "brain_volume_cm3": round(volume_cm3, 1),
        "brain_voxels": int(np.count_nonzero(sitk.GetArrayViewFromImage(mask))),
        "changed_voxels": changed,
        "brain_edge_voxels": edge,
        "brain_edge_strength": edge_strength,
    }
    if face_shape_seed is not None:
        info["face_shape_seed"] = face_shape_seed  # which CC0 face shape the new head was drawn to
        info["face_surface"] = face_surface  # its skin moved onto that face after decoding
        info["face_pose"] = "brain" if rotation is not None else "grid"  # turned with the brain, or upright
    return DeidResult(out, mask, timings, info, frame)


def deidentify_file(in_path, out_path, *, mask_path=None, mask_out=None, weights=None, resolution: int = DEFAULT_RESOLUTION,
                    steps: Optional[int] = None, seed: int = 0, device: str = "auto", overwrite: bool = False,
                    reporter: Optional[Reporter] = None, bundle=None, envelope: bool = True,
                    provenance: bool = True, self_check: bool = True, on_flag: str = "mark",
                    retries: int = 2) -> DeidResult:
    """Read, de-identify and write one scan. Output checks happen before any work; writes are atomic.

    ``self_check`` (default on) checks the output before it is written (``cpmae.selfcheck``);
    ``on_flag`` / ``retries`` say what happens to a flagged output.
    """
    from cpmae.brainmask import load_mask
    from cpmae.io import check_output_path, read_image, write_images

    reporter = reporter if reporter is not None else Reporter("none")
    inputs = [p for p in (in_path, mask_path) if p is not None]
    check_output_path(out_path, inputs=inputs, overwrite=overwrite)
    if mask_out is not None:
        check_output_path(mask_out, inputs=inputs, overwrite=overwrite, role="brain mask (--mask-out)",
                          other_outputs={"the de-identified image (OUTPUT)": out_path})
    with reporter.stage("read"):
        image = read_image(in_path)
        mask = load_mask(mask_path, image) if mask_path is not None else None
    def produce(s: int) -> DeidResult:
        return deidentify(image, mask=mask, weights=weights, resolution=resolution, steps=steps, seed=s,
                          device=device, envelope=envelope, reporter=reporter, bundle=bundle,
                          source=mask_path if mask_path is not None else in_path)

    if self_check:
        from cpmae.selfcheck import run_checked

        result = run_checked(produce, image, seed, on_flag=on_flag, retries=retries, reporter=reporter,
                             source=in_path)
    else:
        result = produce(seed)
    with reporter.stage("write"):  # image, mask and provenance: verified, then published together
        record = (result.info, result.info.get("seed", seed)) if provenance else None  # a retry moves the seed
        write_images([(result.image, out_path)] + ([(result.mask, mask_out)] if mask_out is not None else []),
                     overwrite=overwrite, provenance=record)
    result.timings = dict(reporter.timings)
    return result
