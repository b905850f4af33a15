"""``cpmae export RUN... --out DIR``: turn training runs into a weights bundle for ``cpmae deidentify``.

Takes the brain tokenizer, non-brain tokenizer and prior runs (run or checkpoint folders, in
any order; each run says what it trained), checks that they fit together (same grid, codebook
and token grid), and writes a safetensors bundle with a manifest (sha256 per file, resolution,
training data, steps, validation metrics, git revision, licence) via ``cpmae.weights``.
"""
from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("export", help="export trained runs (2 tokenizers + prior) as a weights bundle")
    p.add_argument("runs", nargs=3, type=Path, metavar="RUN",
                   help="run or checkpoint folders: brain tokenizer, non-brain tokenizer, prior (any order)")
    p.add_argument("--out", required=True, type=Path, help="weights folder to write (replaced if it exists)")
    p.add_argument("--note", default="", help="free text stored in the manifest (e.g. 'demonstration weights')")
    p.add_argument("--full-precision", action="store_true", help="store fp32 instead of fp16 (twice the size)")
    p.set_defaults(func=run)


def export(runs, out: Path, note: str = "", half: bool = True) -> Path:
    from cpmae.errors import InputError
    from cpmae.train.checkpoint import find_checkpoint, load_trained_model
    from cpmae.weights import save_bundle

    found = {}
    for path in runs:
        model, cfg, state = load_trained_model(path)
        key = f"{cfg.part}_tokenizer" if cfg.task == "tokenizer" else "prior"
        if key in found:
            raise InputError(f"two runs train the {key.replace('_', ' ')}", path=path)
        found[key] = (model, cfg, state, find_checkpoint(path))
    missing = {"brain_tokenizer", "nonbrain_tokenizer", "prior"} - set(found)
    if missing:
        raise InputError(f"missing run(s) for: {', '.join(sorted(missing))}")
    resolutions = {k: v[1].resolution for k, v in found.items()}
    if len(set(resolutions.values())) != 1:
        raise InputError(f"runs are for different grids: {resolutions}")
    brain, nonbrain, prior = (found[k][0] for k in ("brain_tokenizer", "nonbrain_tokenizer", "prior"))
    for name, tok in (("brain", brain), ("nonbrain", nonbrain)):
        if tok.codebook_size != prior.codebook_size:
            raise InputError(f"{name} tokenizer has {tok.codebook_size} codes, the prior {prior.codebook_size}",
                             path=found[f"{name}_tokenizer"][3])
        if tok.cfg.token_size != prior.cfg.token_size:
            raise InputError(f"{name} tokenizer makes {tok.cfg.token_size}³ tokens, the prior expects "
                             f"{prior.cfg.token_size}³", path=found[f"{name}_tokenizer"][3])
    training = {k: {"steps": int(v[2]["step"]), "data": v[2].get("data", ""), "seed": v[1].seed,
                    "global_batch": v[1].batch_size, "elapsed_s": round(float(v[2].get("elapsed_s", 0)), 1),
                    "checkpoint": v[3].name} for k, v in found.items()}
    meta = {"training_data": found["prior"][2].get("data", ""), "training": training,
            "data": data_record(found)}
    if note:
        meta["note"] = note
    return save_bundle(out, brain, nonbrain, prior, resolutions["prior"], meta=meta, half=half)


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
    out = export(args.runs, args.out, args.note, half=not args.full_precision)
    print(out)
    return 0
