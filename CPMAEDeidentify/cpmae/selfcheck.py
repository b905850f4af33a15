"""Per-scan self-check: does this output still show its patient, has it a face, does the brain seam show?

A data manager who de-identifies 2,000 scans on a server cannot look at each one. Every output is
therefore checked against its input right after it is made, and the numbers go into its provenance
record and the batch manifest (``cpmae review`` shows them). Five checks, each ``pass`` / ``flag``
(or ``n/a`` when it cannot be measured) with its number:

* ``identity`` — *still recognisable?* Euclidean distance between the face embeddings
  (``cpmae.facerec``) of the input's and the output's frontal skin renders; flagged below the
  project's calibrated different-person threshold (``facerec.DIFFERENT_PERSON_THRESHOLD``).
  ``n/a`` when no face is found in the input's render (nothing to compare with).
* ``face`` — *face present?* a face is detected in the output's frontal render (value: dlib's
  detector score of the best face, ``None`` when none).
* ``seam`` — mean absolute intensity step between 6-neighbour voxel pairs that straddle the
  brain-mask boundary, output over input (1.0: the output's boundary looks like the input's);
  flagged above ``SEAM_RATIO_LIMIT``.
* ``brain`` — number of brain voxels whose bits differ from the input (must be 0).
* ``changed`` — fraction of the input's non-brain head voxels that changed (an output that
  passes the original face through changes none); flagged below ``CHANGED_FRACTION_MIN``.

The pose is fixed to the brain, not to the head, and is the audit's (``cpmae.pose``): the
input's brain is registered rigidly to the reference brain (pydeface's averaged head), and input
and output are both resampled into that brain frame and rendered from its fixed frontal camera,
the output with the input's skin threshold. The brain is bit-identical in both, so both pictures
are taken from the same place relative to it, whatever the scan's tilt or the new head's size,
and the identity distance is measured like the audit's attacker sees faces. Where the reference
cannot be had (it is downloaded from PyPI and brain-masked once per machine: an offline server)
or registration fails, the fallback is the scanner's frame with the camera on the brain mask's
centroid; ``pose`` in the record says which was used.

``run_checked`` applies the user's policy to a flagged output: ``mark`` (keep it, flagged),
``retry`` (sample again with the next seeds, up to ``retries`` more times, keep the attempt with the
fewest flags) or ``fail`` (raise ``SelfCheckFailed``: no output is written).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from cpmae.errors import CPMAEError

CHECKS = ("identity", "face", "seam", "brain", "changed")
ON_FLAG = ("mark", "retry", "fail")
DEFAULT_RETRIES = 2
RENDER_SIZE = (320, 320)  # the size the face recognizer's threshold was measured on
# An output whose brain-boundary step is 1.5x the input's shows a seam a reader notices in a slice;
# provisional, set from the shipped model's outputs (docs/batch.md gives the measured values).
SEAM_RATIO_LIMIT = 1.5
# A remodeled head changes nearly every non-brain head voxel; the original face passed through
# changes none. Half is far from both.
CHANGED_FRACTION_MIN = 0.5
POSE_FRAME = "brain frame (cpmae.pose: brain registered to the reference brain), frontal, orthographic"
POSE_CENTROID = "scanner frame, frontal, orthographic, camera on the brain mask centroid (no brain reference)"
EXIT_FLAGGED = 5  # `cpmae deidentify --on-flag fail`: the output was flagged and not written


class SelfCheckFailed(CPMAEError):
    """The output failed its self-check under ``--on-flag fail``; nothing was written."""

    exit_code = EXIT_FLAGGED


def _result(ok: Optional[bool], value: Any, limit: Any = None, **extra) -> Dict[str, Any]:
    rec = {"result": "n/a" if ok is None else ("pass" if ok else "flag"), "value": value}
    if limit is not None:
        rec["limit"] = limit
    rec.update(extra)
    return rec


def brain_centre(mask: sitk.Image) -> np.ndarray:
    """Physical LPS centroid of the brain mask: the focal point of the self-check's cameras."""
    idx = np.argwhere(sitk.GetArrayViewFromImage(mask) > 0)  # [n, (z, y, x)]
    if not len(idx):
        size = np.asarray(mask.GetSize(), dtype=np.float64)
        return np.asarray(mask.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2).tolist()))
    zyx = idx.mean(axis=0)
    return np.asarray(mask.TransformContinuousIndexToPhysicalPoint([float(zyx[2]), float(zyx[1]), float(zyx[0])]))


def brain_pose(image: sitk.Image, mask: sitk.Image):
    """(reference, transform) of the audit's brain frame for this scan, or None where it cannot be had."""
    from cpmae import pose

    return pose.brain_frame(image, mask)


def frontal_renders(image: sitk.Image, output: sitk.Image, mask: sitk.Image, size=RENDER_SIZE,
                    iso: Optional[float] = None, frame=None):
    """(input picture, output picture, pose name): frontal renders in the brain-fixed pose.

    ``frame``: this scan's ``brain_pose`` when the caller already has it (the pipeline registered the
    brain to turn the face: ``DeidResult.brain_frame``), so it is not registered twice."""
    from cpmae.render import render_face, skin_threshold

    iso = skin_threshold(image) if iso is None else iso
    framed = frame if frame is not None else brain_pose(image, mask)
    if framed is not None:
        from cpmae.pose import to_frame

        ref, transform = framed
        pictures = [render_face(to_frame(img, transform, ref), "frontal", size=size, iso=iso, centre=ref.focus)
                    for img in (image, output)]
        return pictures[0], pictures[1], POSE_FRAME
    centre = brain_centre(mask)
    before = render_face(image, "frontal", size=size, iso=iso, centre=centre)
    after = render_face(output, "frontal", size=size, iso=iso, centre=centre)
    return before, after, POSE_CENTROID


def _bbox(brain: np.ndarray, margin: int = 2):
    idx = [np.nonzero(brain.any(axis=tuple(a for a in range(3) if a != k)))[0] for k in range(3)]
    if any(len(i) == 0 for i in idx):
        return None
    return tuple(slice(max(0, int(i[0]) - margin), int(i[-1]) + margin + 1) for i in idx)


def boundary_step(values: np.ndarray, brain: np.ndarray) -> float:
    """Mean |difference| over 6-neighbour voxel pairs with one voxel in the brain mask and one out."""
    total, count = 0.0, 0
    v = values.astype(np.float64, copy=False)
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        a, b = tuple(a), tuple(b)
        cross = brain[a] != brain[b]
        if cross.any():
            d = np.abs(v[a][cross] - v[b][cross])
            total += float(np.nansum(d))
            count += int(cross.sum())
    return total / count if count else 0.0


def seam_ratio(x: np.ndarray, y: np.ndarray, brain: np.ndarray) -> Dict[str, float]:
    """Brain-boundary step of the output and of the input, and their ratio."""
    box = _bbox(brain)
    if box is None:
        return {"input_step": 0.0, "output_step": 0.0, "ratio": 1.0}
    b = brain[box]
    sx, sy = boundary_step(x[box], b), boundary_step(y[box], b)
    ratio = sy / sx if sx > 0 else (1.0 if sy == 0 else float("inf"))
    return {"input_step": round(sx, 4), "output_step": round(sy, 4), "ratio": round(ratio, 4)}


def _bits(a: np.ndarray) -> np.ndarray:
    """Bit pattern view (NaN == NaN, -0.0 != 0.0): 'bit-identical' means exactly that."""
    a = np.ascontiguousarray(a)
    return a.view(np.dtype(f"u{a.dtype.itemsize}")) if a.dtype.itemsize in (1, 2, 4, 8) else a


def self_check(image: sitk.Image, output: sitk.Image, mask: sitk.Image, size=RENDER_SIZE,
               frame=None) -> Dict[str, Any]:
    """All checks of one output against its input and brain mask (see the module docstring);
    ``frame`` as in ``frontal_renders``."""
    from cpmae.facerec import DIFFERENT_PERSON_THRESHOLD, recognizer

    t0 = time.perf_counter()
    x = sitk.GetArrayViewFromImage(image)
    y = sitk.GetArrayViewFromImage(output)
    brain = sitk.GetArrayViewFromImage(mask) > 0
    if x.shape != y.shape or x.shape != brain.shape:
        raise ValueError(f"self-check needs one grid: input {x.shape}, output {y.shape}, mask {brain.shape}")
    checks: Dict[str, Dict[str, Any]] = {}

    same_dtype = x.dtype == y.dtype
    differing = int(np.count_nonzero(_bits(x[brain]) != _bits(y[brain]))) if same_dtype else int(brain.sum())
    checks["brain"] = _result(differing == 0, differing, 0, unit="brain voxels that differ")

    from cpmae.render import skin_threshold

    iso = skin_threshold(image)
    changed = x != y
    head = ~brain & ((x > iso) | (y > iso))
    n_head = int(head.sum())
    fraction = float(np.count_nonzero(changed & head)) / n_head if n_head else 0.0
    checks["changed"] = _result(fraction >= CHANGED_FRACTION_MIN, round(fraction, 4), CHANGED_FRACTION_MIN,
                                changed_voxels=int(np.count_nonzero(changed)),
                                unit="fraction of non-brain head voxels changed")

    seam = seam_ratio(x, y, brain)
    checks["seam"] = _result(seam["ratio"] <= SEAM_RATIO_LIMIT, seam["ratio"], SEAM_RATIO_LIMIT,
                             input_step=seam["input_step"], output_step=seam["output_step"],
                             unit="brain-boundary step, output / input")

    pose = None
    try:
        before, after, pose = frontal_renders(image, output, mask, size, iso, frame)
        rec = recognizer()
        faces_after, faces_before = rec.faces(after), rec.faces(before)
    except Exception as exc:  # no EGL, odd geometry...: the face checks could not run, and that shows
        note = f"could not run: {exc.__class__.__name__}: {(str(exc).splitlines() or [''])[0][:200]}"
        checks["face"] = _result(False, None, note=note, unit="detector score of the output's best face")
        checks["identity"] = _result(False, None, DIFFERENT_PERSON_THRESHOLD, note=note,
                                     unit="embedding distance input-output")
        faces_after = faces_before = None
    if faces_after is not None:
        _face_checks(checks, faces_before, faces_after)

    ordered = {name: checks[name] for name in CHECKS}
    flagged = [name for name, c in ordered.items() if c["result"] == "flag"]
    return {"passed": not flagged, "flagged": flagged, "checks": ordered, "pose": pose,
            "seconds": round(time.perf_counter() - t0, 3)}


def _face_checks(checks: Dict[str, Dict[str, Any]], faces_before, faces_after) -> None:
    from cpmae.facerec import DIFFERENT_PERSON_THRESHOLD, distance

    checks["face"] = _result(bool(faces_after), round(faces_after[0].score, 3) if faces_after else None,
                             unit="detector score of the output's best face")
    if not faces_before:
        checks["identity"] = _result(None, None, DIFFERENT_PERSON_THRESHOLD, note="no face found in the input's render",
                                     unit="embedding distance input-output")
    elif not faces_after:
        checks["identity"] = _result(True, None, DIFFERENT_PERSON_THRESHOLD, note="no face in the output",
                                     unit="embedding distance input-output")
    else:
        d = distance(faces_before[0].embedding, faces_after[0].embedding)
        checks["identity"] = _result(d >= DIFFERENT_PERSON_THRESHOLD, round(d, 4), DIFFERENT_PERSON_THRESHOLD,
                                     unit="embedding distance input-output")


def run_checked(produce: Callable[[int], Any], image: sitk.Image, seed: int, on_flag: str = "mark",
                retries: int = DEFAULT_RETRIES, reporter=None, source=None):
    """``produce(seed) -> DeidResult``, checked, under the ``on_flag`` policy (see the module docstring).

    The returned result's ``info`` carries ``self_check`` (with every attempt's seed and flags) and
    the ``seed`` that made the kept output.
    """
    if on_flag not in ON_FLAG:
        raise ValueError(f"on_flag must be one of {ON_FLAG}, not {on_flag!r}")
    attempts: List[Dict[str, Any]] = []
    best = best_check = None
    n = 1 + (max(0, int(retries)) if on_flag == "retry" else 0)
    for k in range(n):
        s = int(seed) + k
        result = produce(s)
        frame = getattr(result, "brain_frame", None)
        if reporter is not None:
            with reporter.stage("self-check"):
                check = self_check(image, result.image, result.mask, frame=frame)
        else:
            check = self_check(image, result.image, result.mask, frame=frame)
        attempts.append({"seed": s, "flagged": check["flagged"]})
        if best is None or len(check["flagged"]) < len(best_check["flagged"]):
            best, best_check = result, check
        if check["passed"]:
            break
    best_check = dict(best_check, on_flag=on_flag, attempts=attempts)
    if not best_check["passed"] and on_flag == "fail":
        where = f"{source}: " if source is not None else ""
        raise SelfCheckFailed(f"{where}self-check flagged {', '.join(best_check['flagged'])} "
                              f"({summary_line(best_check)}); --on-flag fail: no output written")
    best.info["self_check"] = best_check  # best.info["seed"] is already the seed that made it
    return best


def summary_line(check: Optional[Dict[str, Any]]) -> str:
    """One line for logs and stderr: each check's result and number."""
    if not check:
        return "not run"
    parts = []
    for name, c in check.get("checks", {}).items():
        value = c.get("value")
        parts.append(f"{name} {c['result']} ({'-' if value is None else value})")
    return "; ".join(parts)
