"""Refuse to audit weights on the cohort they were trained on.

A model scored on its own training subjects looks more private (or less) than it is: the audit
would measure memory, not de-identification. Training runs record the seeds of the generated
cohorts they learned from in the bundle manifest, ``manifest["data"]["cohort_seeds"]``; a
generated cohort records its seed in ``cohort.json``. When the two meet, the audit stops with
one line (exit code 4, like other weights that do not fit the request). A bundle that does not
record its seeds (older bundles) gets a warning, not a refusal: nobody can tell.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

from cpmae.errors import WeightsError


class TrainedOnCohortError(WeightsError):
    """The weights were trained on subjects of the cohort being audited (exit code 4)."""


def cohort_seed(cohort_dir) -> Optional[int]:
    """The generator seed of a generated cohort (its ``cohort.json``), or None for any other folder."""
    try:
        meta = json.loads((Path(cohort_dir) / "cohort.json").read_text(encoding="utf-8"))
        return int(meta["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def training_seeds(manifest: dict) -> Optional[List[int]]:
    """The cohort seeds a bundle was trained on, or None when its manifest does not say."""
    data = manifest.get("data") if isinstance(manifest, dict) else None
    seeds = data.get("cohort_seeds") if isinstance(data, dict) else None
    if seeds is None:
        return None
    try:
        return sorted({int(s) for s in seeds})
    except (TypeError, ValueError):
        return None


def check_disjoint(manifest: dict, seed: Optional[int], weights_path=None) -> str:
    """Raise :class:`TrainedOnCohortError` when ``seed`` is among the bundle's training seeds.

    Returns what is known, for results.json and the report: ``"disjoint"``, ``"not a generated
    cohort"`` (no seed to compare) or ``"unknown"`` (the bundle does not record its seeds).
    """
    seeds = training_seeds(manifest)
    if seed is None:
        return "not a generated cohort"
    if seeds is None:
        return "unknown"
    if int(seed) in seeds:
        raise TrainedOnCohortError(
            f"these weights were trained on cohort seed {seed} (manifest data.cohort_seeds {seeds}); "
            "audit a cohort generated with another seed (cpmae generate-cohort --seed N)", path=weights_path)
    return "disjoint"
