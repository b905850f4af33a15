"""``cpmae export RUN... --out DIR``: turn training runs into a weights bundle for ``cpmae deidentify``.

Takes the brain tokenizer, non-brain tokenizer and prior runs (run or checkpoint folders, in
any order; each run says what it trained), checks that they fit together (same grid, codebook
and token grid), and writes a safetensors bundle with a manifest (sha256 per file, resolution,
training data, steps, validation metrics, git revision, licence) via ``cpmae.weights``.

With ``--base BUNDLE`` fewer runs are needed: the components no run gives are taken from that
bundle, with their training records, held-out metrics and (when its prior is kept) its sampler
settings, which were measured with that prior. A decoder fine-tuned alone (``freeze_encoder``)
is shipped this way without retraining the prior on tokens that did not change.
"""
from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("export", help="export trained runs (2 tokenizers + prior) as a weights bundle")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                   help="run or checkpoint folders: brain tokenizer, non-brain tokenizer, prior (any order); "
                        "with --base, only those that replace its components")
    p.add_argument("--out", required=True, type=Path, help="weights folder to write (replaced if it exists)")
    p.add_argument("--base", help="bundle (folder or shipped name) whose components fill in for the runs not given")
    p.add_argument("--note", default="", help="free text stored in the manifest (e.g. 'demonstration weights')")
    p.add_argument("--full-precision", action="store_true", help="store fp32 instead of fp16 (twice the size)")
    p.set_defaults(func=run)


def export(runs, out: Path, note: str = "", half: bool = True, base=None) -> Path:
    from cpmae.errors import InputError
    from cpmae.train.checkpoint import find_checkpoint, load_trained_model
    from cpmae.weights import COMPONENTS, load_bundle, save_bundle

    found = {}
    for path in runs:
        model, cfg, state = load_trained_model(path)
        key = f"{cfg.part}_tokenizer" if cfg.task == "tokenizer" else "prior"
        if key in found:
            raise InputError(f"two runs train the {key.replace('_', ' ')}", path=path)
        found[key] = (model, cfg, state, find_checkpoint(path))
    kept, bundle = {}, None
    if base is not None:
        bundle = load_bundle(base)
        kept = {k: getattr(bundle, k) for k in COMPONENTS if k not in found}
    missing = set(COMPONENTS) - set(found) - set(kept)
    if missing:
        raise InputError(f"missing run(s) for: {', '.join(sorted(missing))}")
    resolutions = {k: v[1].resolution for k, v in found.items()}
    resolutions.update({k: bundle.resolution for k in kept})
    if len(set(resolutions.values())) != 1:
        raise InputError(f"runs are for different grids: {resolutions}")
    models = {k: found[k][0] if k in found else kept[k] for k in COMPONENTS}
    where = {k: found[k][3] if k in found else bundle.path for k in COMPONENTS}
    brain, nonbrain, prior = (models[k] for k in COMPONENTS)
    for name, tok in (("brain", brain), ("nonbrain", nonbrain)):
        if tok.codebook_size != prior.codebook_size:
            raise InputError(f"{name} tokenizer has {tok.codebook_size} codes, the prior {prior.codebook_size}",
                             path=where[f"{name}_tokenizer"])
        if tok.cfg.token_size != prior.cfg.token_size:
            raise InputError(f"{name} tokenizer makes {tok.cfg.token_size}³ tokens, the prior expects "
                             f"{prior.cfg.token_size}³", path=where[f"{name}_tokenizer"])
    training = {k: {"steps": int(v[2]["step"]), "data": v[2].get("data", ""), "seed": v[1].seed,
                    "global_batch": v[1].batch_size, "elapsed_s": round(float(v[2].get("elapsed_s", 0)), 1),
                    "checkpoint": v[3].name} for k, v in found.items()}
    data = data_record(found)
    if bundle is not None:
        m = bundle.manifest
        for k in kept:
            training[k] = dict(m.get("training", {}).get(k, {}), bundle=m.get("name", str(bundle.path)),
                               bundle_sha256=bundle.sha256)
        merge_base_data(data, m, kept)
        training = {k: training[k] for k in COMPONENTS}
    meta = {"training_data": found["prior"][2].get("data", "") if "prior" in found
            else bundle.manifest.get("training_data", ""), "training": training, "data": data}
    if "prior" in kept and "sampler" in bundle.manifest:
        meta["sampler"] = dict(bundle.manifest["sampler"])  # chosen by measurement for this prior
    if bundle is not None:
        meta["derived_from"] = {"bundle": bundle.manifest.get("name", str(bundle.path)), "sha256": bundle.sha256,
                                "kept": sorted(kept), "replaced": sorted(found)}
    if note:
        meta["note"] = note
    keep = {k: bundle.path / bundle.manifest["components"][k]["file"] for k in kept}
    return save_bundle(out, brain, nonbrain, prior, resolutions["prior"], meta=meta, half=half, keep_files=keep)


def merge_base_data(data: dict, manifest: dict, kept) -> None:
    """Add the kept components' records from the base bundle's manifest to a new ``data`` record, in
    place: their cohort seeds (the audit must still refuse them), steps, hardware, time and metrics."""
    from cpmae.weights import COMPONENTS

    base = manifest.get("data", {})
    data["cohort_seeds"] = sorted(set(data["cohort_seeds"]) | {int(s) for s in base.get("cohort_seeds", [])})
    for key in ("steps", "hardware", "held_out_metrics"):
        for k in kept:
            if k in base.get(key, {}):
                data[key][k] = base[key][k]
        data[key] = {k: data[key][k] for k in COMPONENTS if k in data[key]}
    data["source_heads"] = sorted(set(data["source_heads"]) | set(base.get("source_heads", [])))
    data["wall_time_s"] = round(data["wall_time_s"] + sum(
        float(manifest.get("training", {}).get(k, {}).get("elapsed_s", 0)) for k in kept), 1)


def data_record(found) -> dict:
    """What the weights learned from: cohort seeds (the audit refuses a cohort that overlaps them),
    source heads, steps, hardware, wall time and each run's last held-out metrics."""
    from cpmae import cohort
    from cpmae.train.logs import METRICS, read_metrics

    seeds, metrics = set(), {}
    for key, (_, cfg, state, ckpt) in found.items():
        seeds.update(int(s) for s in state.get("cohort_seeds", []))
        log = Path(ckpt).parent.parent / METRICS
        val = {}
        if log.is_file():
            for rec in read_metrics(log):
                if rec.get("step", 0) <= int(state["step"]) and any(k.startswith("val_") for k in rec):
                    val = {k: v for k, v in rec.items() if k.startswith("val_")}
        metrics[key] = val
    return {
        "cohort_seeds": sorted(seeds),
        "cohort_generator": getattr(cohort, "GENERATOR_VERSION", ""),
        "source_heads": list(getattr(cohort, "SOURCES", ())),
        "steps": {k: int(v[2]["step"]) for k, v in found.items()},
        "hardware": {k: v[2].get("hardware", "not recorded") for k, v in found.items()},
        "wall_time_s": round(sum(float(v[2].get("elapsed_s", 0)) for v in found.values()), 1),
        "held_out_metrics": metrics,
    }


def run(args) -> int:
    out = export(args.runs, args.out, args.note, half=not args.full_precision, base=args.base)
    print(out)
    return 0
