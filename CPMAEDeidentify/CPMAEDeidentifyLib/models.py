"""The model catalogue (Resources/Models.json) and its per-user download cache.

Each entry names a weights bundle (a folder with manifest.json + safetensors files):
``builtin`` entries ship inside the engine (``cpmae/weights/<name>``) and need no download;
others are a zip archive at ``url`` whose sha256 and size are checked before it is unpacked
into the cache. Hospitals without internet pick a local folder instead (``useLocalFolder``).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from cpmae.errors import WeightsError
from cpmae.hashing import sha256_file

MODULE_DIR = Path(__file__).resolve().parent.parent
CATALOGUE = MODULE_DIR / "Resources" / "Models.json"
BUILTIN_WEIGHTS = MODULE_DIR / "cpmae" / "weights"
REQUIRED_FIELDS = ("name", "version", "url", "sha256", "size", "license", "resolution")
OLD_SPELLINGS = {"licence": "license"}  # catalogues written before the field took the manifests' spelling


@dataclass
class ModelEntry:
    name: str
    version: str
    url: str
    sha256: str
    size: int
    license: str  # SPDX identifier, spelled as in the weights manifests
    resolution: int
    description: str = ""

    @property
    def builtin(self) -> bool:
        return self.url.startswith("builtin:")

    @property
    def label(self) -> str:
        return f"{self.name} {self.version} ({self.resolution}³{', built in' if self.builtin else ''})"


def loadCatalogue(path=CATALOGUE) -> List[ModelEntry]:
    """Entries of Models.json; a malformed file is a WeightsError naming it."""
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))["models"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"cannot read the model catalogue ({exc})", path=path) from exc
    entries = []
    for record in records:
        if isinstance(record, dict):
            record = dict(record)
            for old, new in OLD_SPELLINGS.items():
                if old in record:
                    record.setdefault(new, record.pop(old))
        missing = [f for f in REQUIRED_FIELDS if f not in record]
        if missing:
            raise WeightsError(f"model entry {record.get('name', '?')!r} lacks {', '.join(missing)}", path=path)
        entries.append(ModelEntry(**{k: record[k] for k in REQUIRED_FIELDS},
                                  description=record.get("description", "")))
    return entries


def cacheDir() -> Path:
    """Per-user model cache (next to the engine's sample cache; ``$CPMAE_CACHE`` moves both)."""
    from cpmae.samples import cache_dir

    return cache_dir() / "models"


sha256File = sha256_file  # the engine's one file hash: the catalogue's sha256 is checked the same way


def isBundle(folder) -> bool:
    return (Path(folder) / "manifest.json").is_file()


def useLocalFolder(folder) -> Path:
    """A bundle folder the user picked (offline hospitals); checked for a manifest only here,
    the engine verifies every file's sha256 when it loads the bundle."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError("the weights folder does not exist", path=folder)
    if not isBundle(folder):
        raise WeightsError("not a CPMAE weights bundle (no manifest.json in it)", path=folder)
    return folder


def bundleResolution(folder) -> int:
    """The grid (128 or 256) a bundle was trained for, from its manifest: the panel runs a
    model at its own resolution, never at one chosen separately."""
    manifest = useLocalFolder(folder) / "manifest.json"
    try:
        resolution = int(json.loads(manifest.read_text(encoding="utf-8"))["resolution"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"cannot read the bundle's resolution ({exc})", path=manifest) from exc
    from cpmae.geometry import GRIDS

    if resolution not in GRIDS:
        raise WeightsError(f"unsupported resolution {resolution}", path=manifest)
    return resolution


def localPath(entry: ModelEntry) -> Path:
    if entry.builtin:
        return BUILTIN_WEIGHTS / entry.url[len("builtin:"):]
    return cacheDir() / f"{entry.name}-{entry.version}"


def isAvailable(entry: ModelEntry) -> bool:
    return isBundle(localPath(entry))


def ensureModel(entry: ModelEntry, onProgress: Optional[Callable[[int, int], None]] = None) -> Path:
    """The bundle folder of ``entry``, downloading and verifying it once if needed."""
    target = localPath(entry)
    if isBundle(target):
        return target
    if entry.builtin:
        raise WeightsError(f"the built-in weights {entry.name!r} are not in this installation", path=target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=target.parent) as tmp:
        archive = Path(tmp) / "bundle.zip"
        try:
            with urllib.request.urlopen(entry.url, timeout=60) as response, open(archive, "wb") as out:
                done = 0
                while True:
                    chunk = response.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
                    done += len(chunk)
                    if onProgress:
                        onProgress(done, entry.size)
        except (OSError, ValueError) as exc:  # URLError is an OSError
            raise WeightsError(f"download failed ({exc}); check the network or use a local weights folder",
                               path=entry.url) from exc
        if entry.size and archive.stat().st_size != entry.size:
            raise WeightsError(f"download is {archive.stat().st_size} bytes, expected {entry.size}", path=entry.url)
        digest = sha256File(archive)
        if digest != entry.sha256:
            raise WeightsError(f"checksum mismatch: sha256 {digest}, expected {entry.sha256}", path=entry.url)
        unpacked = Path(tmp) / "unpacked"
        try:
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    if member.startswith("/") or ".." in Path(member).parts:
                        raise WeightsError(f"unsafe path {member!r} in the archive", path=entry.url)
                zf.extractall(unpacked)
        except zipfile.BadZipFile as exc:
            raise WeightsError("the download is not a zip archive", path=entry.url) from exc
        bundles = [p.parent for p in unpacked.rglob("manifest.json")]
        if len(bundles) != 1:
            raise WeightsError("the archive does not hold exactly one weights bundle", path=entry.url)
        if target.exists():
            shutil.rmtree(target)
        os.replace(bundles[0], target)
    return target
