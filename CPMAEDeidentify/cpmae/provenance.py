"""The provenance record written next to every de-identified image.

A person who receives a de-identified scan should be able to tell how it was made (method,
engine version, exact weights, seed, when, how many voxels changed) without the record
becoming a new leak. The record is therefore built from a fixed list of fields that come from
the engine, never from the input file: no input path, no input hash, no header text.
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from cpmae import __version__
from cpmae.atomic import write_text_atomic
from cpmae.hashing import sha256_file

SUFFIX = ".provenance.json"
METHOD = "CP-MAE learned face remodeling (brain voxels kept bit-identical, non-brain resynthesised)"

#: fields copied from ``DeidResult.info``; anything else in ``info`` is ignored on purpose
INFO_FIELDS = ("weights_sha256", "seed", "steps", "resolution", "changed_voxels", "version")


def provenance_path(output: Union[str, Path]) -> Path:
    """``sub-01_T1w.nii.gz`` -> ``sub-01_T1w.nii.gz.provenance.json`` in the same folder."""
    output = Path(output)
    return output.with_name(output.name + SUFFIX)


file_sha256 = sha256_file  # the name batch and the tests know; the one helper is cpmae.hashing


def build_record(info: Mapping[str, Any], output_name: str, output_sha256: str,
                 seed: int, now: Optional[_dt.datetime] = None,
                 sidecar_dropped: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The provenance dictionary: method, version, weights sha256, seed, time, changed voxels."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    rec: Dict[str, Any] = {
        "method": METHOD,
        "software": "cpmae",
        "version": str(info.get("version") or __version__),
        "weights_sha256": info.get("weights_sha256"),
        "seed": int(seed),
        "steps": info.get("steps"),
        "resolution": info.get("resolution"),
        "changed_voxels": info.get("changed_voxels"),
        "created_utc": now.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "output": output_name,
        "output_sha256": output_sha256,
    }
    for key in ("steps", "resolution", "changed_voxels"):
        if rec[key] is not None:
            rec[key] = int(rec[key])
    if info.get("self_check") is not None:  # numbers and flags made by cpmae.selfcheck, no input text
        rec["self_check"] = info["self_check"]
    if sidecar_dropped is not None:  # key NAMES only (cpmae.sidecar): what was removed, never its value
        rec["sidecar_dropped_keys"] = sorted(str(k) for k in sidecar_dropped)
    return rec


def record_text(info: Mapping[str, Any], output_name: str, output_sha256: str, seed: int,
                sidecar_dropped: Optional[Sequence[str]] = None) -> str:
    """The record as the JSON text that is written."""
    rec = build_record(info, output_name, output_sha256, seed, sidecar_dropped=sidecar_dropped)
    return json.dumps(rec, indent=2) + "\n"


def write_provenance(output: Union[str, Path], info: Mapping[str, Any], seed: int,
                     record_path: Optional[Union[str, Path]] = None,
                     sidecar_dropped: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Hash ``output`` and write its provenance record atomically (read back before the rename)."""
    output = Path(output)
    text = record_text(info, output.name, file_sha256(output), seed, sidecar_dropped)
    write_text_atomic(record_path or provenance_path(output), text)
    return json.loads(text)
