"""Fault-tolerant batch de-identification of a folder or a BIDS dataset.

What a data manager needs from a run over thousands of scans, and how it is provided:

* **nothing half-written**: each case is produced in ``OUT_DIR/.cpmae-staging/<case>/`` and
  its finished files are renamed into place; a kill at any moment leaves complete files only;
* **resume**: a JSON-lines manifest gets a ``started`` record before a case and an ``ok`` /
  ``failed`` record after it (appended and fsync'ed); a rerun skips ``ok`` cases, retries the
  rest, and redoes a case killed mid-way (its ``started`` record proves the files are ours);
  a case that was interrupted ``max_attempts`` times in a row is reported failed instead of
  being retried forever (a file that crashes the process must not block the batch);
* **one bad case never stops the batch**: it is recorded with its one-line error and skipped;
  the exit code is ``min(failed, 100)`` (see ``exit_code``);
* **sharding**: ``shard=(i, n)`` keeps the cases whose id hashes to ``i`` (``pseudonym.shard_of``);
  each shard writes its own manifest, so array tasks on a cluster never share a file;
* **privacy**: sidecars are scrubbed (``cpmae.sidecar``), provenance records hold nothing from the
  input (``cpmae.provenance``), seeds come from a keyed subject pseudonym (``cpmae.pseudonym``).

The per-case work is an injectable callable (``process_case``) so that the machinery is tested
in milliseconds; the default (``PipelineWorker``) calls ``cpmae.pipeline.deidentify_file``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import signal
import socket
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from cpmae import __version__, locks
from cpmae.atomic import (STORAGE_ERRNOS, ensure_output_dir, fsync_dir, remove_stale_temps, storage_error,
                          write_text_atomic)
from cpmae.dataset import (DETACHED_HEADER_SUFFIXES, IMAGE_FORMATS, IMAGE_SUFFIXES, WRITABLE_SUFFIXES, find_scans,
                           image_suffix, strip_image_suffix)
from cpmae.errors import Cancelled, CPMAEError, InputError, OutputError, WeightsError
from cpmae.geometry import DEFAULT_RESOLUTION
from cpmae.hashing import sha256_files
from cpmae.progress import Reporter
from cpmae.provenance import SUFFIX as PROVENANCE_SUFFIX, provenance_path, write_provenance
from cpmae.pseudonym import resolve_key, seed_for_subject, shard_of, subject_of
from cpmae.sidecar import write_scrubbed_sidecar

#: outputs keep the input's format where ``cpmae.io.write_image`` can write it, else become NRRD
OUTPUT_SUFFIX = {s: s if s in WRITABLE_SUFFIXES else ".nrrd" for s in IMAGE_SUFFIXES}
LOG_DIR = "logs"
STAGING_DIR = ".cpmae-staging"
MAX_EXIT_FAILED = 100
EXIT_BATCH_ERROR = 101  # the batch could not run at all (see docs/batch.md)

ProcessCase = Callable[..., Mapping[str, Any]]


@dataclass(frozen=True)
class Case:
    """One input image and where its de-identified copy goes."""

    case_id: str  # input path relative to IN_DIR (posix): stable id for sharding and the manifest
    in_path: Path
    out_rel: str  # output path relative to OUT_DIR
    sidecar: Optional[Path]
    subject: str

    @property
    def key(self) -> str:
        """File-name-safe form of ``case_id`` for logs and staging folders."""
        return self.case_id.replace("/", "__")


@dataclass
class BatchSummary:
    layout: str
    total: int  # cases in this shard
    ok: int = 0  # finished in this run
    already_done: int = 0  # ok in the manifest before this run
    failed: List[Tuple[str, str]] = field(default_factory=list)  # (case_id, error)
    manifest: Optional[Path] = None
    flagged: List[str] = field(default_factory=list)  # ok cases whose self-check flagged them (cpmae.selfcheck)

    @property
    def exit_code(self) -> int:
        return exit_code(len(self.failed) + len(self.flagged))


def exit_code(n_failed: int) -> int:
    """0 when every case is ok and unflagged, else the number of failed + flagged cases capped at 100."""
    return min(int(n_failed), MAX_EXIT_FAILED)


# --------------------------------------------------------------------------- discovery
def _output_rel(rel: str) -> str:
    """Output path of an input: same name and format, or, for a converted format, the source
    suffix kept in the name (``scan.mha`` -> ``scan_mha.nrrd``), so that ``scan.mha``, ``scan.mhd``,
    ``scan.nhdr`` and ``scan.nrrd`` never share an output (see ``_refuse_collisions``)."""
    suffix = image_suffix(rel)
    if not suffix:
        return rel
    if OUTPUT_SUFFIX[suffix] == suffix:
        return rel
    return f"{rel[: -len(suffix)]}_{suffix.lstrip('.')}{OUTPUT_SUFFIX[suffix]}"


def _sidecar_of(path: Path) -> Optional[Path]:
    stem = strip_image_suffix(path.name)
    cand = path.with_name(f"{stem}.json") if stem else None
    return cand if cand is not None and cand.is_file() else None


def sidecar_output(out_rel: str) -> str:
    """Where a case's scrubbed sidecar goes: next to its output, named after it (``<output stem>.json``)."""
    return f"{out_rel[: -len(image_suffix(out_rel))]}.json"


def _refuse_collisions(cases: List[Case], in_dir: Path) -> None:
    """Two inputs that would write the same file (image, record or sidecar) are refused before any work.

    Names are compared case-insensitively: an output folder on a case-insensitive file system
    (macOS, exFAT, SMB shares) would silently merge ``Scan.nii`` and ``scan.nii``.
    """
    owner: Dict[str, Case] = {}
    for case in cases:
        names = [case.out_rel, case.out_rel + PROVENANCE_SUFFIX]
        if case.sidecar is not None:
            names.append(sidecar_output(case.out_rel))
        for name in dict.fromkeys(n.lower() for n in names):
            other = owner.setdefault(name, case)
            if other is not case:
                shown = next(n for n in names if n.lower() == name)
                raise InputError(f"{other.case_id} and {case.case_id} would both be written to {shown}; rename "
                                 "one of them (outputs must not overwrite each other)", path=in_dir)


def discover_cases(in_dir: Union[str, Path]) -> Tuple[str, List[Case]]:
    """(layout, cases sorted by id): every anatomical image that is not a mask (``cpmae.dataset``).

    Output names are unique by construction (``_output_rel``) and checked (``_refuse_collisions``).
    A file without a BIDS ``sub-`` entity is its own subject, named after its output (so
    ``scan.mha`` and ``scan.nrrd`` get different seeds).
    """
    in_dir = Path(in_dir)
    if in_dir.exists() and not in_dir.is_dir():
        raise InputError("input is not a folder (use `cpmae deidentify` for one file)", path=in_dir)
    layout, scans = find_scans(in_dir)
    cases = []
    for p in scans:
        rel = p.relative_to(in_dir).as_posix()
        out_rel = _output_rel(rel)
        subject = subject_of(rel)
        if not subject.startswith("sub-"):
            subject = strip_image_suffix(Path(out_rel).name) or subject
        cases.append(Case(rel, p, out_rel, _sidecar_of(p), subject))
    cases.sort(key=lambda c: c.case_id)
    if not cases:
        what = "sub-*/[ses-*/]anat/*" if layout == "bids" else "*"
        raise InputError(f"no images found (looked for {what} with {', '.join(IMAGE_SUFFIXES)})", path=in_dir)
    _refuse_collisions(cases, in_dir)
    return layout, cases


def select_shard(cases: List[Case], shard: Optional[Tuple[int, int]]) -> List[Case]:
    """The cases of shard ``(i, n)``; all cases when ``shard`` is None."""
    if shard is None:
        return list(cases)
    i, n = shard
    return [c for c in cases if shard_of(c.case_id, n) == i]


# --------------------------------------------------------------------------- manifest
def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def manifest_name(shard: Optional[Tuple[int, int]]) -> str:
    return "manifest.jsonl" if shard is None else f"manifest-shard-{shard[0]}of{shard[1]}.jsonl"


def read_manifests(log_dir: Path) -> List[Dict[str, Any]]:
    """Every record of every shard's manifest; a line cut by a kill is ignored."""
    records = []
    for path in sorted(log_dir.glob("manifest*.jsonl")):
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and "case" in rec and "status" in rec:
                    records.append(rec)
    return records


class Manifest:
    """Append-only JSON-lines file, one record per event, fsync'ed; locked against a second writer."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a+b")
        try:
            locks.lock(self._fh)
        except OSError:
            self._fh.close()
            raise OutputError("another deidentify-batch run is writing this manifest "
                              "(same OUT_DIR and shard); wait for it or use another shard", path=path) from None
        self._fh.seek(0, os.SEEK_END)
        if self._fh.tell() > 0:  # a kill may have cut the last line: start on a fresh one
            self._fh.seek(-1, os.SEEK_END)
            if self._fh.read(1) != b"\n":
                self._write(b"\n")

    def _write(self, data: bytes) -> None:
        try:
            self._fh.seek(0, os.SEEK_END)
            self._fh.write(data)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as exc:  # a full disk: the batch cannot record outcomes, so it stops (exit 101)
            raise storage_error(exc, self.path) from None

    def append(self, record: Mapping[str, Any]) -> None:
        self._write((json.dumps(record, sort_keys=False) + "\n").encode("utf-8"))

    def close(self) -> None:
        self._fh.close()


class OutDirLock:
    """One lock per OUT_DIR: runs may share a folder only as disjoint shards of one ``--shard i/N`` spec.

    Each run holds an exclusive ``flock`` on ``logs/.running/<spec>.lock`` for its lifetime
    (``all`` for an unsharded run, ``shard-<i>of<N>``). Under a short global lock
    (``logs/.running/.guard``) a new run tests every other lock file: one that is still locked is
    a live run, and it must be a different shard of the same N, else the new run is refused.
    So ``--shard 0/8`` .. ``7/8`` (a SLURM array) run in parallel, while an unsharded run next
    to ``--shard 0/1``, or ``0/2`` next to ``0/3``, which would process the same cases, cannot.
    A run that dies (even ``kill -9``) releases its lock with its process.
    """

    def __init__(self, log_dir: Path, shard: Optional[Tuple[int, int]]):
        folder = log_dir / ".running"
        folder.mkdir(parents=True, exist_ok=True)
        self.spec = "all" if shard is None else f"shard-{shard[0]}of{shard[1]}"
        self.i, self.n = (0, 1) if shard is None else shard
        self.path = folder / f"{self.spec}.lock"
        self._fh = None
        with open(folder / ".guard", "a+b") as guard:
            locks.lock(guard, blocking=True)  # held for milliseconds: no two runs decide at once
            try:
                for other in sorted(folder.glob("*.lock")):
                    if other == self.path:
                        continue
                    who = _live_holder(other)
                    i, n = _spec_of(other.stem)
                    if who is not None and (n != self.n or i == self.i):  # unsharded = 0/1
                        raise OutputError(
                            f"another deidentify-batch run ({_spec_text(other.stem)}{who}) is working in this "
                            f"output folder; a run with {_spec_text(self.spec)} would process the same cases. "
                            "Runs can share a folder only as different shards of one --shard i/N", path=log_dir.parent)
                fh = open(self.path, "a+b")
                try:
                    locks.lock(fh)
                except OSError:
                    who = _holder_text(fh)
                    fh.close()
                    raise OutputError(f"another deidentify-batch run ({_spec_text(self.spec)}{who}) is working in "
                                      "this output folder on the same cases; wait for it or use another shard",
                                      path=log_dir.parent) from None
                try:  # who holds it, for the refusal message of the next run (best effort on a full disk)
                    fh.seek(0)
                    fh.truncate()
                    fh.write(f"{socket.gethostname()} {os.getpid()}\n".encode())
                    fh.flush()
                except OSError:
                    pass
                self._fh = fh
            finally:
                locks.unlock(guard)

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing drops the lock; the file stays (harmless, reused next time)
            self._fh = None


def _spec_of(stem: str) -> Tuple[int, int]:
    """(i, N) of a lock file's name; an unsharded run is 0/1; an unknown name overlaps everything."""
    if stem == "all":
        return 0, 1
    try:
        i, n = stem[len("shard-"):].split("of")
        return int(i), int(n)
    except ValueError:
        return -1, -1


def _spec_text(stem: str) -> str:
    if stem == "all":
        return "no --shard"
    i, n = _spec_of(stem)
    return f"--shard {i}/{n}"


def _holder_text(fh) -> str:
    try:
        fh.seek(0)
        host, pid = fh.read(200).decode("utf-8", "replace").split()[:2]
        return f", pid {pid} on {host}"
    except (OSError, ValueError):
        return ""


def _live_holder(path: Path) -> Optional[str]:
    """None when no process holds ``path``'s lock, else a short ", pid N on HOST" text."""
    try:
        fh = open(path, "rb")
    except OSError:
        return None
    try:
        try:
            locks.lock(fh, exclusive=False)
        except OSError:
            return _holder_text(fh)
        locks.unlock(fh)
        return None
    finally:
        fh.close()


@dataclass
class CaseHistory:
    """What earlier runs recorded about one case."""

    ok: Optional[Dict[str, Any]] = None  # latest ok record
    started: bool = False  # some run began this case (so files at its output are ours)
    interrupted_in_a_row: int = 0  # trailing started records with no outcome after them


def case_histories(records: Iterable[Mapping[str, Any]]) -> Dict[str, CaseHistory]:
    hist: Dict[str, CaseHistory] = {}
    for rec in records:
        h = hist.setdefault(rec["case"], CaseHistory())
        status = rec["status"]
        if status == "started":
            h.started = True
            h.interrupted_in_a_row += 1
        elif status == "ok":
            h.ok, h.interrupted_in_a_row = dict(rec), 0
        elif status in ("failed", "cancelled"):
            h.interrupted_in_a_row = 0
    return hist


# --------------------------------------------------------------------------- the default worker
class PipelineWorker:
    """De-identifies one file with ``cpmae.pipeline``; loads the weights once for the whole batch."""

    def __init__(self, self_check: bool = True, on_flag: str = "mark", retries: int = 2):
        self._bundle = None
        self._bundle_key = None
        self.check = dict(self_check=self_check, on_flag=on_flag, retries=retries)  # cpmae.selfcheck policy

    def __call__(self, in_path: Path, out_path: Path, *, seed: int, resolution: int, weights: Optional[str],
                 steps: Optional[int], device: str, reporter: Reporter) -> Mapping[str, Any]:
        from cpmae.pipeline import deidentify_file, pick_device
        from cpmae.weights import load_bundle

        key = (weights, resolution, device)
        if self._bundle is None or self._bundle_key != key:
            with reporter.stage("load weights"):
                self._bundle = load_bundle(weights, resolution, pick_device(device))
            self._bundle_key = key
        result = deidentify_file(in_path, out_path, weights=weights, resolution=resolution, steps=steps,
                                 seed=seed, device=device, overwrite=False, reporter=reporter,
                                 bundle=self._bundle, provenance=False, **self.check)
        return dict(result.info)


# --------------------------------------------------------------------------- input identity
def input_files(path: Path) -> List[Path]:
    """The files whose bytes make up an input image: the file, plus the data file of a detached
    header (``.mhd`` ``ElementDataFile``, ``.nhdr`` ``data file``) when it names one file."""
    files = [path]
    suffix = image_suffix(path.name)
    if suffix not in DETACHED_HEADER_SUFFIXES:
        return files
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16).decode("latin-1")
    except OSError:
        return files
    for line in head.splitlines():
        key, sep, value = line.partition(":" if IMAGE_FORMATS[suffix] == "NRRD" else "=")
        key, value = key.strip().lower(), value.strip()
        if sep and key in ("elementdatafile", "data file", "datafile"):
            if value and value.upper() != "LOCAL" and " " not in value and "%" not in value:
                files.append(path.parent / value)
            break
        if suffix == ".nhdr" and not line.strip():
            break  # end of the NRRD header
    return files


def input_fingerprint(path: Path) -> Tuple[str, Tuple[Tuple[int, int, int, int], ...]]:
    """(sha256 of the input's bytes, identity of its files) before and after a case is processed.

    The pipeline reads the input itself, after it was hashed. Equal fingerprints before and after
    mean the recorded hash is of the bytes that were processed: every write to a file changes
    its ctime (which no user call can set back) and its content hash, so a file being copied in,
    rewritten or replaced in between is caught. For a detached header the hash covers header and
    data file, in that order.
    """
    files = input_files(path)
    stats = []
    try:
        for f in files:
            st = os.stat(f)
            stats.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        digest = sha256_files(files)
    except FileNotFoundError:
        raise InputError("input file disappeared", path=path) from None
    except OSError as exc:
        raise InputError(f"cannot read the input ({exc.strerror or exc})", path=path) from None
    return digest, tuple(stats)


# --------------------------------------------------------------------------- the run
def _case_outputs(out_dir: Path, case: Case) -> List[Path]:
    """Every file the batch places for a case (image, provenance, sidecar); the image is placed last."""
    out = out_dir / case.out_rel
    files = [out, provenance_path(out)]
    if case.sidecar is not None:
        files.append(out_dir / sidecar_output(case.out_rel))
    return files


def _write_dataset_description(in_dir: Path, out_dir: Path) -> None:
    """A derivative dataset_description.json (only the BIDS version is taken from the input)."""
    target = out_dir / "dataset_description.json"
    if target.exists():
        return
    bids_version = "1.9.0"
    try:
        src = json.loads((in_dir / "dataset_description.json").read_text(encoding="utf-8"))
        if isinstance(src.get("BIDSVersion"), str) and len(src["BIDSVersion"]) < 16:
            bids_version = src["BIDSVersion"]
    except (OSError, ValueError, AttributeError):
        pass
    desc = {
        "Name": "cpmae de-identified images (face remodeled, brain unchanged)",
        "BIDSVersion": bids_version,
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "cpmae",
            "Version": __version__,
            "Description": "CP-MAE learned face remodeling; sidecars scrubbed of identifying fields",
        }],
    }
    write_text_atomic(target, json.dumps(desc, indent=2) + "\n")
    ignore = out_dir / ".bidsignore"
    if not ignore.exists():
        write_text_atomic(ignore, f"{LOG_DIR}/\n*.provenance.json\n")


class _SigtermAsInterrupt:
    """Turn SIGTERM (schedulers' time limit, the Slicer panel's cancel) into KeyboardInterrupt."""

    def __enter__(self):
        self._old = None
        if threading.current_thread() is threading.main_thread():
            def handler(signum, frame):
                raise KeyboardInterrupt
            self._old = signal.signal(signal.SIGTERM, handler)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
        return False


def _check_settings_consistent(histories: Mapping[str, CaseHistory], seed_key_tag: str, resolution: int,
                               out_dir: Path) -> None:
    for case_id, h in histories.items():
        if h.ok is None:
            continue
        if h.ok.get("resolution") != resolution or h.ok.get("seed_key") != seed_key_tag:
            raise InputError(
                f"already holds outputs made with other settings (case {case_id}: resolution "
                f"{h.ok.get('resolution')}, different seed or pseudonym key); use a new output folder "
                "or --overwrite", path=out_dir)


class _CaseLog:
    """The per-case log file. It is bookkeeping for people: a disk too full to take another line
    must not crash the batch (the manifest, which must be written, stops it cleanly instead)."""

    def __init__(self, path: Path):
        try:
            self._fh = open(path, "a", encoding="utf-8")
        except OSError:
            self._fh = None

    def write(self, text: str) -> None:
        self._do(lambda fh: fh.write(text))

    def flush(self) -> None:
        self._do(lambda fh: fh.flush())

    def _do(self, action) -> None:
        if self._fh is None:
            return
        try:
            action(self._fh)
        except OSError:
            self.close()

    def close(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError:
                pass

    def __enter__(self) -> "_CaseLog":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def _storage_errors_stop_the_batch(run):
    """A full disk outside a case's own writes (lock, manifest, logs) stops the batch with one line (exit 101)."""
    import functools

    @functools.wraps(run)
    def wrapper(in_dir, out_dir, *args, **kwargs):
        try:
            return run(in_dir, out_dir, *args, **kwargs)
        except OSError as exc:
            if exc.errno in STORAGE_ERRNOS:
                raise storage_error(exc, out_dir) from None
            raise

    return wrapper


@_storage_errors_stop_the_batch
def run_batch(in_dir: Union[str, Path], out_dir: Union[str, Path], *, resolution: int = DEFAULT_RESOLUTION,
              weights: Optional[str] = None, seed: int = 0, steps: Optional[int] = None,
              device: str = "auto", shard: Optional[Tuple[int, int]] = None, overwrite: bool = False,
              pseudonym_key: Optional[str] = None, max_attempts: int = 2,
              reporter: Optional[Reporter] = None,
              process_case: Optional[ProcessCase] = None) -> BatchSummary:
    """De-identify every case of ``in_dir`` (this shard's share) into ``out_dir``; never raises for one case."""
    in_dir, out_dir = Path(in_dir).absolute(), Path(out_dir).absolute()
    reporter = reporter or Reporter("none")
    process_case = process_case or PipelineWorker()
    layout, all_cases = discover_cases(in_dir)
    if out_dir.resolve() == in_dir.resolve():
        raise OutputError("output folder is the input folder; the originals would be overwritten", path=out_dir)
    cases = select_shard(all_cases, shard)
    key = resolve_key(pseudonym_key, seed)
    # records store which key made a seed without revealing it (a hash of a hash of the key)
    seed_key_tag = seed_for_subject("cpmae-key-check", key) & 0xFFFFFFFF

    ensure_output_dir(out_dir)
    log_dir = ensure_output_dir(out_dir / LOG_DIR, "log folder")
    ensure_output_dir(log_dir / "cases", "log folder")

    lock = OutDirLock(log_dir, shard)
    try:
        manifest = Manifest(log_dir / manifest_name(shard))
    except BaseException:
        lock.release()
        raise
    try:
        histories = case_histories(read_manifests(log_dir))
        if not overwrite:
            _check_settings_consistent(histories, seed_key_tag, resolution, out_dir)
        if layout == "bids":
            _write_dataset_description(in_dir, out_dir)
        summary = BatchSummary(layout=layout, total=len(cases), manifest=manifest.path)
        common = dict(resolution=resolution, weights=weights, steps=steps, device=device)
        with _SigtermAsInterrupt(), reporter.stage("cases", total=len(cases)) as bar:
            for case in cases:
                _run_one(case, in_dir, out_dir, histories.get(case.case_id, CaseHistory()), manifest,
                         summary, seed_for_subject(case.subject, key), seed_key_tag, overwrite,
                         max_attempts, shard, process_case, common, reporter)
                bar.advance()
        _write_summary(log_dir, shard, summary)
        staging = out_dir / STAGING_DIR
        try:
            staging.rmdir()  # only when empty: other shards may still be working
        except OSError:
            pass
        return summary
    finally:
        manifest.close()
        lock.release()


def _write_summary(log_dir: Path, shard, summary: BatchSummary) -> None:
    name = "summary.json" if shard is None else f"summary-shard-{shard[0]}of{shard[1]}.json"
    write_text_atomic(log_dir / name, json.dumps({
        "layout": summary.layout, "cases": summary.total, "ok_this_run": summary.ok,
        "already_done": summary.already_done, "failed": len(summary.failed), "flagged": len(summary.flagged),
        "flagged_cases": list(summary.flagged),
        "failed_cases": [{"case": c, "error": e} for c, e in summary.failed],
        "exit_code": summary.exit_code, "finished_utc": _utc_now(),
    }, indent=2) + "\n")


def _run_one(case: Case, in_dir: Path, out_dir: Path, hist: CaseHistory, manifest: Manifest,
             summary: BatchSummary, seed: int, seed_key_tag: int, overwrite: bool, max_attempts: int,
             shard, process_case: ProcessCase, common: Mapping[str, Any], reporter: Reporter) -> None:
    outputs = _case_outputs(out_dir, case)
    final_image = outputs[0]
    base = {"case": case.case_id, "output": case.out_rel, "seed": seed, "seed_key": seed_key_tag,
            "resolution": common["resolution"], "shard": None if shard is None else f"{shard[0]}/{shard[1]}"}

    if hist.ok is not None and not overwrite and final_image.is_file() and outputs[1].is_file():
        summary.already_done += 1
        if (hist.ok.get("self_check") or {}).get("flagged"):
            summary.flagged.append(case.case_id)
        return

    def fail(error: str, seconds: float = 0.0, **extra) -> None:
        manifest.append({**base, "status": "failed", "error": error, "seconds": round(seconds, 3),
                         "time": _utc_now(), **extra})
        summary.failed.append((case.case_id, error))
        reporter.log(f"{case.case_id}: FAILED: {error}")

    if hist.interrupted_in_a_row >= max_attempts:
        fail(f"interrupted {hist.interrupted_in_a_row} times mid-case (killed, or the process crashed on "
             f"this file); not retried again (raise --max-attempts to retry)")
        return
    ours = hist.started or overwrite
    existing = [p for p in outputs if p.exists()]
    if existing and not ours:
        fail(str(OutputError("output exists and was not made by this batch (use --overwrite)", path=existing[0])))
        return

    staging = out_dir / STAGING_DIR / case.key
    log_path = out_dir / LOG_DIR / "cases" / f"{case.key}.log"
    manifest.append({**base, "status": "started", "time": _utc_now(), "host": socket.gethostname(),
                     "pid": os.getpid()})
    t0 = time.perf_counter()
    moved: List[Path] = []
    with _CaseLog(log_path) as log:
        log.write(f"=== {_utc_now()} start {case.case_id} seed={seed} resolution={common['resolution']} "
                  f"cpmae {__version__}\n")
        log.flush()
        case_reporter = Reporter("json", json_stream=log)
        try:
            if staging.exists():
                shutil.rmtree(staging)
            staging.mkdir(parents=True)
            input_sha, before = input_fingerprint(case.in_path)
            staged_image = staging / final_image.name
            info = dict(process_case(case.in_path, staged_image, seed=seed, reporter=case_reporter, **common) or {})
            if input_fingerprint(case.in_path) != (input_sha, before):  # the hash is of the bytes processed
                raise InputError("the input changed while it was being processed (a copy still running?); its "
                                 "hash would not describe what was processed: rerun when it is complete",
                                 path=case.in_path)
            if not staged_image.is_file():
                raise OutputError("the pipeline reported success but wrote no output", path=final_image)
            from cpmae.io import verify_image_file

            verify_image_file(staged_image, name=final_image)  # gzip stream + header size: never ok a cut file
            staged = []
            dropped = None
            if case.sidecar is not None:  # scrubbed first: the record lists the dropped key names
                dropped = write_scrubbed_sidecar(case.sidecar, staging / outputs[2].name)
                staged.append((staging / outputs[2].name, outputs[2]))
                log.write(f"sidecar: dropped {len(dropped)} fields not on the allow-list: {', '.join(dropped)}\n")
            rec = write_provenance(staged_image, info, info.get("seed", seed),  # a retried self-check moves it
                                   sidecar_dropped=dropped)
            if not provenance_path(staged_image).is_file():
                raise OutputError("the provenance record was not written", path=outputs[1])
            staged.append((provenance_path(staged_image), outputs[1]))
            staged.append((staged_image, final_image))  # last: the image's presence means the case is whole
            for src, dst in staged:
                dst.parent.mkdir(parents=True, exist_ok=True)
                remove_stale_temps(dst.parent)
                os.replace(src, dst)
                moved.append(dst)
            fsync_dir(final_image.parent)
            if not (outputs[1].is_file() and final_image.is_file()):
                raise OutputError("image or provenance record missing after placing them", path=final_image)
            seconds = time.perf_counter() - t0
            manifest.append({**base, "status": "ok", "error": None, "input_sha256": input_sha,
                             "output_sha256": rec["output_sha256"], "weights_sha256": info.get("weights_sha256"),
                             "steps": info.get("steps"), "changed_voxels": info.get("changed_voxels"),
                             "seconds": round(seconds, 3), "time": _utc_now(), "version": __version__,
                             "self_check": info.get("self_check"), "input": str(case.in_path)})  # for `cpmae review`
            summary.ok += 1
            if (info.get("self_check") or {}).get("flagged"):
                summary.flagged.append(case.case_id)
                log.write(f"self-check flagged {', '.join(info['self_check']['flagged'])}\n")
            log.write(f"=== ok in {seconds:.2f} s; timings {json.dumps(case_reporter.timings)}\n")
            reporter.log(f"{case.case_id}: ok ({seconds:.1f} s)")
        except KeyboardInterrupt:
            log.write(f"=== cancelled after {time.perf_counter() - t0:.2f} s\n")
            manifest.append({**base, "status": "cancelled", "error": "cancelled", "time": _utc_now()})
            _undo(moved)
            raise Cancelled("batch cancelled; rerun the same command to finish the remaining cases") from None
        except WeightsError as exc:
            # every later case would fail the same way: record it and stop the batch
            log.write(f"=== failed: {exc}\n")
            _undo(moved)
            fail(str(exc), time.perf_counter() - t0)
            raise
        except CPMAEError as exc:
            if exc.path is not None and Path(exc.path).parent == staging:  # name the output, not our staging copy
                exc.path = str(final_image.parent / Path(exc.path).name)
            log.write(f"=== failed: {exc}\n")
            _undo(moved)
            fail(str(exc), time.perf_counter() - t0)
        except Exception as exc:  # a bug or a library failure on this file: keep going, keep the trace
            log.write(traceback.format_exc())
            log.write("=== failed (internal error)\n")
            _undo(moved)
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            fail(f"{case.in_path}: internal error {exc.__class__.__name__}: {first_line} "
                 f"(traceback in {log_path.relative_to(out_dir)})", time.perf_counter() - t0)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _undo(moved: List[Path]) -> None:
    """Remove the files of a case that failed half-way through being placed (they are ours)."""
    for p in moved:
        try:
            p.unlink()
        except OSError:
            pass
