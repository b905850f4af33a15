"""One audit run: methods -> utility + pictures -> attacker -> privacy scores -> report.

Stages (each reported to the progress reporter and timed):

1. every evaluated scan × method: de-identify, compare with the original (``utility``), render
   the face (``renders``); a (scan, method) result is cached on disk so that re-running with
   one more method only computes that method;
2. the attacker's training pictures: subjects *disjoint* from the evaluated ones (generated
   cohort subjects far beyond the evaluated indices, or a user's ``train_dir``), each rendered
   canonically and as several simulated re-scans;
3. the Siamese attacker is trained (cached as safetensors next to the pictures);
4. per method, the 5-way identification rate (bootstrap over folds) and the top-α retrieval
   curve, plus an attacker check on re-scans of the evaluated originals;
5. ``report`` writes report.html, results.json and results.csv.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import SimpleITK as sitk

from cpmae.audit import attack, overlap, renders
from cpmae.audit.dataset import Scan, discover_scans
from cpmae.audit.methods import DEFAULT_METHODS, Method, make_cpmae, resolve_methods
from cpmae.errors import InputError
from cpmae.geometry import QUICK_RESOLUTION
from cpmae.progress import Reporter
from cpmae.pseudonym import public_key, seed_for_subject

TRAIN_INDEX_START = 100_000  # generated training subjects start here: disjoint from any cohort index
RESCAN_CHECK = "RESCAN"  # privacy-table control: re-scans of the evaluated originals (attacker check)


@dataclass
class AuditSettings:
    """Everything that changes an audit's numbers (recorded in results.json)."""

    methods: List[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    weights: Optional[str] = None
    resolution: int = QUICK_RESOLUTION
    steps: Optional[int] = None
    seed: int = 0
    device: str = "cpu"
    render_size: int = 160
    train_subjects: int = 24
    train_variants: int = 4
    train_steps: int = 300
    train_dir: Optional[str] = None
    folds: int = 1000
    deepbet: bool = True
    grid_subjects: Optional[List[str]] = None
    max_grid_subjects: int = 4
    cache: bool = True
    mask_limits: Optional[dict] = None  # relaxes brain-volume checks (phantoms in tests)


def machine_description() -> str:
    """The machine numbers were measured on, in words (CPU model, cores, accelerator)."""
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
        if "avx512_bf16" in flags:
            cpu += " with avx512_bf16"
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core {cpu}, {gpu}, torch {torch.__version__}, {platform.system()}"


# --------------------------------------------------------------------------- stage 1
def _load_scan(scan: Scan, device: str):
    """(image, brain mask) of a scan; the mask from its file, else from deepbet."""
    from cpmae.brainmask import compute_brain_mask, load_mask
    from cpmae.io import read_image

    image = read_image(scan.image)
    if scan.mask is not None:
        brain = load_mask(scan.mask, image)
    else:
        brain = compute_brain_mask(image, device=device)
    if not sitk.GetArrayViewFromImage(brain).any():
        raise InputError("the brain mask is empty", path=scan.mask or scan.image)
    return image, brain


NOT_ENGINE = ("audit", "train", "review")  # subpackages a remodel does not run


def code_key(root: Path, skip=NOT_ENGINE) -> str:
    """Short hash of the .py files under ``root`` (in path order), without the ``skip`` folders."""
    from cpmae.hashing import sha256_files

    root = Path(root)
    files = sorted(f for f in root.rglob("*.py") if f.relative_to(root).parts[0] not in skip)
    return sha256_files(files)[:12]


@functools.lru_cache(maxsize=1)
def engine_code_key() -> str:
    """``code_key`` of the installed cpmae package. A cached CPMAE output is only reused by the same
    engine: keyed on the weights alone, an audit after a change to a stage (``cpmae.conform``)
    served the old stage's outputs."""
    import cpmae

    return code_key(Path(cpmae.__file__).resolve().parent)


def _method_fingerprint(method: Method, settings: AuditSettings, weights_id: str) -> str:
    """What a cached (scan, method) result depends on besides the scan (a user method: its name only,
    so re-run with --no-cache after editing one)."""
    if method.name == "CPMAE":
        return f"CPMAE|{weights_id}|{engine_code_key()}|{settings.resolution}|{settings.steps}|{settings.device}"
    return method.name


ATTACKS = (  # (key, attacker, region): the privacy table's columns
    ("siamese_face", "Siamese ResNet", "face region"),
    ("siamese_head", "Siamese ResNet", "whole head"),
    ("facerec_face", "face recognizer (dlib)", "face region"),
    ("facerec_head", "face recognizer (dlib)", "whole head"),
    ("silhouette_face", "silhouette (Dice)", "face region"),
    ("silhouette_head", "silhouette (Dice)", "whole head"),
)
PICTURE_KEYS = ("views", "face_views", "sil_head", "sil_face", "emb_head", "emb_face")


def _pictures(image, transform, settings: AuditSettings, iso: float, focus=None, render_filter=None) -> dict:
    """All that the attackers see of one head (``renders.frame_pictures`` + dlib embeddings)."""
    pics = renders.frame_pictures(image, transform, settings.render_size, iso, focus, render_filter)
    pics.update(renders.face_features(pics))
    return pics


def _filtered(base: dict, render_filter) -> dict:
    """A picture-level control (BLACK, BLURRED) applied to the original's pictures: the attackers see
    the filtered pictures; an all-black picture shows no silhouette either."""
    pics = dict(base)
    pics["views"] = renders.apply_filter(base["views"], render_filter)
    pics["face_views"] = renders.apply_filter(base["face_views"], render_filter)
    if not pics["views"].any():
        pics["sil_head"] = np.zeros_like(base["sil_head"])
        pics["sil_face"] = np.zeros_like(base["sil_face"])
    pics.update(renders.face_features(pics))
    return pics


def evaluate_scans(scans: List[Scan], methods: List[Method], settings: AuditSettings, cache: renders.ResultCache,
                   reporter: Reporter, weights_id: str = ""):
    """(per method {scan id: {"views": RGB [V,H,W,3], "face_views", silhouettes, embeddings, "metrics": {...} |
    None, "error": str | None}}, {scan id: why it was skipped}). An unreadable scan is skipped, not fatal: one
    bad file among a hundred should not cost the other ninety-nine. Pictures are taken in the brain frame
    (``pose``): the transform is computed once per scan from its original, whose brain every method keeps."""
    from cpmae import pose
    from cpmae.audit.utility import reference_for, utility_metrics

    extractor = None
    if settings.deepbet:  # the downstream brain extraction a user would run
        import functools

        from cpmae.brainmask import compute_brain_mask

        extractor = functools.partial(compute_brain_mask, device=settings.device)

    out: Dict[str, dict] = {m.name: {} for m in methods}
    skipped: Dict[str, str] = {}
    blank = None
    with reporter.stage("de-identify, measure, render", len(scans) * len(methods)) as stage:
        for scan in scans:
            ref = None
            image = brain = transform = None
            base = None
            for method in methods:
                key = renders.cache_key(renders.file_fingerprint(scan.image),
                                        scan.mask and renders.file_fingerprint(scan.mask),
                                        _method_fingerprint(method, settings, weights_id), settings.seed, scan.id,
                                        settings.render_size, settings.deepbet, settings.device)
                hit = cache.get(key) if settings.cache else None
                if hit is not None:
                    arrays, record = hit
                    out[method.name][scan.id] = {**arrays, **record}
                    stage.advance()
                    continue
                if image is None:
                    try:
                        image, brain = _load_scan(scan, settings.device)
                    except InputError as exc:
                        skipped[scan.id] = str(exc)
                        reporter.log(f"skipped: {exc}")
                        stage.advance(len(methods) - methods.index(method))
                        break
                    iso, _ = renders.render_reference(image)
                    transform = pose.brain_transform(image, brain)
                record = {"metrics": None, "error": None, "seconds": None}
                t0 = time.perf_counter()
                try:
                    if method.changes_volume:
                        # each scan its own seed, as `cpmae batch --seed` gives (without a secret key):
                        # with one seed for all, every CPMAE output would get the same new face
                        result = method.volume(image, brain, seed_for_subject(scan.id, public_key(settings.seed)))
                        pics = _pictures(result, transform, settings, iso)
                    else:  # ORIGINAL and the picture-level controls start from the original's pictures
                        result = image
                        if base is None:
                            base = _pictures(image, transform, settings, iso)
                        pics = base
                        if method.render_filter is not None:
                            pics = _filtered(base, method.render_filter)
                    record["seconds"] = time.perf_counter() - t0
                    if method.render_filter is None:  # utility of a picture-level control is meaningless
                        if ref is None:
                            ref = reference_for(image, brain, extractor)
                        record["metrics"] = utility_metrics(ref, result, extractor)
                except Exception as exc:  # one method failing on one scan must not sink the audit
                    record["error"] = f"{type(exc).__name__}: {exc}"
                    reporter.log(f"{scan.id} / {method.name}: {record['error']}")
                    if blank is None:
                        blank = _blank_pictures(settings)
                    pics = blank
                out[method.name][scan.id] = {**pics, **record}
                if record["error"] is None:
                    cache.put(key, {k: pics[k] for k in PICTURE_KEYS}, record)
                stage.advance()
    for per in out.values():
        for sid in skipped:
            per.pop(sid, None)
    return out, skipped


def _blank_pictures(settings: AuditSettings) -> dict:
    """What a failed method shows the attackers: nothing (black pictures, no silhouette, no face)."""
    from cpmae import pose

    n = pose.FRAME_SIZE // renders.SILHOUETTE_STEP
    views = np.zeros((len(renders.VIEWS), settings.render_size, settings.render_size, 3), np.uint8)
    empty = np.packbits(np.zeros(n ** 3, bool))
    return {"views": views, "face_views": views, "sil_head": empty, "sil_face": empty,
            "emb_head": np.full(128, np.nan), "emb_face": np.full(128, np.nan)}


# --------------------------------------------------------------------------- stage 2
def _cohort_seed(cohort_dir: Path) -> int:
    seed = overlap.cohort_seed(cohort_dir)
    return 0 if seed is None else seed


def _training_images(settings: AuditSettings, cohort_dir: Path, evaluated: List[Scan]):
    """Yield (fingerprint, make) of the attacker's training subjects, disjoint from the evaluated ones;
    ``make()`` returns (image, brain mask)."""
    if settings.train_dir:
        train = discover_scans(settings.train_dir)
        seen = {s.image.resolve() for s in evaluated}
        train = [s for s in train if s.image.resolve() not in seen]
        if len(train) < 2:
            raise InputError("the attacker needs at least two training scans not among the evaluated ones",
                             path=settings.train_dir)
        for s in train[: settings.train_subjects]:
            yield (f"{renders.file_fingerprint(s.image)}|{s.mask and renders.file_fingerprint(s.mask)}",
                   lambda s=s: _load_scan(s, settings.device))
        return
    from cpmae.cohort import GENERATOR_VERSION, generate_subject

    seed = _cohort_seed(cohort_dir)
    for i in range(settings.train_subjects):
        index = TRAIN_INDEX_START + i

        def make(index=index):
            subj = generate_subject(index, settings.resolution, seed)
            img = sitk.GetImageFromArray(subj.image.astype(np.float32))
            img.CopyInformation(subj.reference)
            brain = sitk.GetImageFromArray(subj.brain.astype(np.uint8))
            brain.CopyInformation(subj.reference)
            return img, brain

        yield f"{GENERATOR_VERSION}|{seed}|{index}|{settings.resolution}", make


def _rescan_pictures(image, brain, transform, settings: AuditSettings, rng: np.random.Generator,
                     faces: bool = False) -> dict:
    """Pictures of a simulated re-scan, re-registered to the brain frame (from a near start)."""
    from cpmae import pose

    iso, _ = renders.render_reference(image)
    moved, moved_brain, motion = renders.rescan(image, rng, brain)
    t = pose.brain_transform(moved, moved_brain, initial=renders.rescan_transform(transform, motion))
    iso_j = iso * rng.uniform(*renders.RESCAN_ISO_RANGE)
    focus = pose.reference().focus + rng.normal(0, renders.RESCAN_FOCUS_MM, 3)
    if faces:
        return _pictures(moved, t, settings, iso_j, focus)
    return renders.frame_pictures(moved, t, settings.render_size, iso_j, focus)


def training_pictures(settings: AuditSettings, cohort_dir: Path, evaluated: List[Scan],
                      cache: renders.ResultCache, reporter: Reporter) -> Dict[str, List[np.ndarray]]:
    """{"head": [...], "face": [...]}: grey pictures ``[train_variants, V, H, W]`` per training subject
    (index 0 canonical), of the whole head and of the face region, in the brain frame."""
    from cpmae import pose

    groups = {"head": [], "face": []}
    with reporter.stage("attacker training pictures", settings.train_subjects) as stage:
        for fingerprint, make in _training_images(settings, cohort_dir, evaluated):
            key = renders.cache_key("train", fingerprint, settings.render_size, settings.train_variants)
            hit = cache.get(key) if settings.cache else None
            if hit is None:
                image, brain = make()
                rng = np.random.default_rng(int(key[:8], 16))  # stable across processes
                iso, _ = renders.render_reference(image)
                transform = pose.brain_transform(image, brain)
                pics = [renders.frame_pictures(image, transform, settings.render_size, iso)]
                pics += [_rescan_pictures(image, brain, transform, settings, rng)
                         for _ in range(settings.train_variants - 1)]
                head = renders.to_grey(np.stack([p["views"] for p in pics]))
                face = renders.to_grey(np.stack([p["face_views"] for p in pics]))
                cache.put(key, {"grey": head, "grey_face": face})
            else:
                head, face = hit[0]["grey"], hit[0]["grey_face"]
            groups["head"].append(head)
            groups["face"].append(face)
            stage.advance()
    return groups


# --------------------------------------------------------------------------- stage 3
def trained_attacker(groups: List[np.ndarray], settings: AuditSettings, cache_dir: Optional[Path],
                     reporter: Reporter):
    """The attacker, from cache when the same pictures and settings trained it before."""
    from safetensors.torch import load_file, save_file

    ts = attack.TrainSettings(steps=settings.train_steps, seed=settings.seed)
    digest = renders.cache_key("attacker", dataclasses.asdict(ts),
                               [float(g.astype(np.float64).sum()) for g in groups], [g.shape for g in groups])
    path = None if cache_dir is None else cache_dir / f"attacker-{digest}.safetensors"
    net = attack.EmbeddingNet(in_channels=groups[0].shape[1])
    if path is not None and settings.cache and path.exists():
        net.load_state_dict(load_file(str(path)))
        return net.eval(), {"cached": True, "seconds": 0.0, "final_loss": None, "steps": ts.steps}
    net, log = attack.train_attacker(groups, ts, reporter=reporter, net=net)
    if path is not None:
        from cpmae.atomic import atomic_path

        with atomic_path(path, suffix=".safetensors", private=True) as tmp:
            save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(tmp))
    tail = log.losses[-20:]
    return net, {"cached": False, "seconds": log.seconds, "final_loss": float(np.mean(tail)) if tail else None,
                 "first_loss": float(np.mean(log.losses[:20])) if log.losses else None, "steps": ts.steps}


# --------------------------------------------------------------------------- stage 4
def _unpack(packed: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.asarray(packed, np.uint8)).astype(bool)


def _distances(nets: Dict[str, object], queries: Dict[str, np.ndarray], pics: List[dict]) -> Dict[str, np.ndarray]:
    """One distance matrix per attack (``ATTACKS``) from the originals (queries) to one method's pictures."""
    from cpmae.audit import scores

    grey = {"head": renders.to_grey(np.stack([p["views"] for p in pics])),
            "face": renders.to_grey(np.stack([p["face_views"] for p in pics]))}
    d = {}
    for region in ("face", "head"):
        d[f"siamese_{region}"] = attack.distance_matrix(queries[f"siamese_{region}"],
                                                        attack.embed(nets[region], grey[region]))
        d[f"facerec_{region}"] = scores.face_distance_matrix(queries[f"facerec_{region}"],
                                                             np.stack([p[f"emb_{region}"] for p in pics]))
        d[f"silhouette_{region}"] = scores.silhouette_distance_matrix(
            queries[f"silhouette_{region}"], np.stack([_unpack(p[f"sil_{region}"]) for p in pics]))
    return d


def _detection(pics: List[dict], key: str) -> dict:
    from cpmae.audit import scores

    found = [bool(np.isfinite(np.asarray(p[key], np.float64)).all()) for p in pics]
    k, n = sum(found), len(found)
    lo, hi = scores.wilson_interval(k, n)
    return {"found": k, "n": n, "rate": 100.0 * k / n if n else float("nan"), "lo": 100.0 * lo, "hi": 100.0 * hi}


def privacy_scores(nets: Dict[str, object], evaluated: Dict[str, dict], scan_ids: List[str],
                   rescans: Optional[List[dict]], settings: AuditSettings, reporter: Reporter) -> Dict[str, dict]:
    """Per method: every attack's identification rate (bootstrap mean, s.d. and 95 % interval over subjects),
    the face detection rates and the Siamese whole-head retrieval curve. Queries are the original pictures."""
    originals = [evaluated["ORIGINAL"][s] for s in scan_ids]
    queries = {
        "siamese_head": attack.embed(nets["head"], renders.to_grey(np.stack([p["views"] for p in originals]))),
        "siamese_face": attack.embed(nets["face"], renders.to_grey(np.stack([p["face_views"] for p in originals]))),
        "facerec_head": np.stack([p["emb_head"] for p in originals]),
        "facerec_face": np.stack([p["emb_face"] for p in originals]),
        "silhouette_head": np.stack([_unpack(p["sil_head"]) for p in originals]),
        "silhouette_face": np.stack([_unpack(p["sil_face"]) for p in originals]),
    }
    options = {name: [per[s] for s in scan_ids] for name, per in evaluated.items()}
    if rescans is not None:
        options[RESCAN_CHECK] = rescans
    out = {}
    with reporter.stage("attack", len(options)) as stage:
        for name, pics in options.items():
            failed = [s for s in scan_ids if name in evaluated and evaluated[name][s].get("error")]
            dists = _distances(nets, queries, pics)
            attacks = {}
            for key, _, _ in ATTACKS:
                r = attack.identification_rate(dists[key], folds=settings.folds, seed=settings.seed)
                attacks[key] = {"mean": r.mean, "sd": r.sd, "lo": r.lo, "hi": r.hi}
            main = attacks["siamese_head"]
            curve = attack.retrieval_curve(dists["siamese_head"], folds=min(settings.folds, 500), seed=settings.seed)
            out[name] = {"identification_mean": main["mean"], "identification_sd": main["sd"],
                         "folds": settings.folds, "n_subjects": len(scan_ids), "chance": 100.0 / attack.N_OPTIONS,
                         "attacks": attacks, "faces_detected": _detection(pics, "emb_head"),
                         "faces_detected_face_region": _detection(pics, "emb_face"),
                         "retrieval": curve, "failed_scans": failed}
            stage.advance()
    return out


def rescan_pictures(scans: List[Scan], settings: AuditSettings, cache: renders.ResultCache,
                    reporter: Reporter) -> List[dict]:
    """Pictures of one simulated re-scan of each evaluated original (the attacker check), in the brain frame."""
    from cpmae import pose

    out = []
    with reporter.stage("attacker check pictures", len(scans)) as stage:
        for i, scan in enumerate(scans):
            key = renders.cache_key("rescan", renders.file_fingerprint(scan.image),
                                    scan.mask and renders.file_fingerprint(scan.mask), settings.render_size,
                                    settings.seed)
            hit = cache.get(key) if settings.cache else None
            if hit is None:
                image, brain = _load_scan(scan, settings.device)
                rng = np.random.default_rng([settings.seed, i, 0x5CA4])
                pics = _rescan_pictures(image, brain, pose.brain_transform(image, brain), settings, rng, faces=True)
                pics = {k: pics[k] for k in PICTURE_KEYS}
                cache.put(key, pics)
            else:
                pics = hit[0]
            out.append(pics)
            stage.advance()
    return out


# --------------------------------------------------------------------------- the run
def run_audit(cohort_dir, out_dir, settings: Optional[AuditSettings] = None,
              reporter: Optional[Reporter] = None) -> dict:
    """Audit every scan of ``cohort_dir`` with ``settings.methods``; write the report into ``out_dir``."""
    from cpmae.audit import report

    settings = settings or AuditSettings()
    reporter = reporter or Reporter("none")  # a fresh one: its stage timings are this run's only

    t0 = time.perf_counter()
    cohort_dir, out_dir = Path(cohort_dir), Path(out_dir)
    scans = discover_scans(cohort_dir)
    if len(scans) < attack.N_OPTIONS:
        raise InputError(f"a {attack.N_OPTIONS}-way identification needs at least {attack.N_OPTIONS} scans, "
                         f"found {len(scans)}", path=cohort_dir)
    cpmae_fn = None
    weights_id = ""
    training_overlap = None  # CPMAE not audited: nothing to check
    names = [n for n in settings.methods]
    if not any(n.strip().upper() == "ORIGINAL" for n in names):
        names = ["ORIGINAL"] + names  # the attack's queries are the original pictures
    if any(n.strip().upper() == "CPMAE" for n in names):
        from cpmae.pipeline import pick_device
        from cpmae.weights import load_bundle

        from cpmae.errors import WeightsError

        with reporter.stage("load weights"):
            try:
                bundle = load_bundle(settings.weights, settings.resolution, pick_device(settings.device))
            except WeightsError as exc:
                raise WeightsError(f"{exc.problem} (or leave CPMAE out of --methods)", path=exc.path) from None
        weights_id = bundle.sha256  # the cache must not serve results of other weights under the same name
        training_overlap = overlap.check_disjoint(bundle.manifest, overlap.cohort_seed(cohort_dir), bundle.path)
        if training_overlap == "unknown":
            reporter.log(f"warning: {bundle.path} does not record the cohort seeds it was trained on "
                         "(manifest data.cohort_seeds); cannot check that this cohort was not among them")
        cpmae_fn = make_cpmae(settings.weights, settings.resolution, settings.steps, settings.device, bundle=bundle,
                              mask_limits=settings.mask_limits)
    methods = resolve_methods(names, cpmae=cpmae_fn)
    report.check_output_dir(out_dir)  # only now: a bad method name or missing weights leave no folder behind
    cache_dir = out_dir / "cache" if settings.cache else None
    cache = renders.ResultCache(cache_dir)

    evaluated, skipped = evaluate_scans(scans, methods, settings, cache, reporter, weights_id)
    scans = [s for s in scans if s.id not in skipped]
    if len(scans) < attack.N_OPTIONS:
        raise InputError(f"only {len(scans)} readable scans (skipped: {'; '.join(skipped.values())}); "
                         f"at least {attack.N_OPTIONS} are needed", path=cohort_dir)
    groups = training_pictures(settings, cohort_dir, scans, cache, reporter)
    net_head, training = trained_attacker(groups["head"], settings, cache_dir, reporter)
    net_face, training_face = trained_attacker(groups["face"], settings, cache_dir, reporter)
    rescans = rescan_pictures(scans, settings, cache, reporter)
    ids = [s.id for s in scans]
    privacy = privacy_scores({"head": net_head, "face": net_face}, evaluated, ids, rescans, settings, reporter)

    results = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "cohort": str(cohort_dir),
        "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k != "mask_limits"},
        "scans": [{"id": s.id, "image": str(s.image), "mask": str(s.mask) if s.mask else None} for s in scans],
        "skipped": skipped,
        "weights_sha256": weights_id or None,
        "cohort_seed": overlap.cohort_seed(cohort_dir),
        "training_overlap": training_overlap,
        "methods": [{"name": m.name, "description": m.description, "picture_level": m.render_filter is not None}
                    for m in methods],
        "training": {**training, "face_region": training_face, "subjects": len(groups["head"]),
                     "variants": settings.train_variants,
                     "source": settings.train_dir or f"generated cohort subjects {TRAIN_INDEX_START}+"},
        "attacks": [{"key": k, "attacker": a, "region": r} for k, a, r in ATTACKS],
        "pose": "brain frame: each scan's brain registered rigidly to pydeface's averaged brain (cpmae.pose)",
        "privacy": privacy,
        "utility": {m.name: {s: {k: evaluated[m.name][s].get(k) for k in ("metrics", "error", "seconds")}
                             for s in ids} for m in methods},
        "timings": {},
    }
    with reporter.stage("report"):
        results["timings"] = {k: round(v, 2) for k, v in reporter.timings.items()}
        results["timings"]["total"] = round(time.perf_counter() - t0, 2)
        paths = report.write_report(out_dir, results, evaluated, settings)
    results["paths"] = {k: str(v) for k, v in paths.items()}
    return results
