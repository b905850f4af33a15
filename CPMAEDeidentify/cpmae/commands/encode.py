"""``cpmae encode``: the paired integer-token dataset of CP-MAE (brain tokens E1, non-brain E2).

Encodes every subject of the generated cohort or of a ``cpmae prepare`` folder with both trained
tokenizers (run folders, or a weights bundle) and writes ``tokens/<id>.npz`` (int16 ``brain``,
``nonbrain``) plus a manifest. ``cpmae train prior --data`` that folder then trains without
touching voxels; the last ``val_subjects`` cases are its held-out set.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path

from cpmae.conditions import SHAPE_MAPS_VERSION
from cpmae.device import DEVICE_HELP
from cpmae.geometry import GRIDS


def register(sub) -> None:
    p = sub.add_parser("encode", help="encode a dataset with the two tokenizers into token pairs for the prior")
    p.add_argument("--out", required=True, type=Path, help="token dataset folder to write")
    p.add_argument("--brain-tokenizer", type=Path, help="run folder of the brain tokenizer")
    p.add_argument("--nonbrain-tokenizer", type=Path, help="run folder of the non-brain tokenizer")
    p.add_argument("--weights", help="or: a weights bundle (folder or shipped name) holding both tokenizers")
    p.add_argument("--data", default="cohort", help="'cohort' or a folder written by `cpmae prepare`")
    p.add_argument("--resolution", type=int, choices=sorted(GRIDS), help="grid (default: the tokenizers')")
    p.add_argument("--count", type=int, default=64, help="subjects to encode (cohort: indices 0..N-1; "
                   "prepared: at most N cases)")
    p.add_argument("--cohort-seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    p.add_argument("--shard", default="0/1", metavar="K/N",
                   help="encode only subjects i with i %% N == K (run N processes side by side; the run that "
                        "finds every pair written, e.g. a last one without --shard, writes the manifest)")
    p.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto")
    p.set_defaults(func=run)


def _tokenizers(args):
    from cpmae.errors import InputError
    from cpmae.train.tasks import load_tokenizer

    if args.weights:
        from cpmae.weights import load_bundle

        b = load_bundle(args.weights, args.resolution, args.device)
        return b.brain_tokenizer, b.nonbrain_tokenizer, f"weights {b.path.name} ({b.sha256[:12]})"
    if not (args.brain_tokenizer and args.nonbrain_tokenizer):
        raise InputError("give --brain-tokenizer and --nonbrain-tokenizer run folders, or --weights")
    return (load_tokenizer(args.brain_tokenizer, args.device), load_tokenizer(args.nonbrain_tokenizer, args.device),
            f"runs {args.brain_tokenizer} + {args.nonbrain_tokenizer}")


def encode_dataset(args) -> Path:
    import numpy as np

    from cpmae import cohort
    from cpmae.atomic import write_text_atomic
    from cpmae.errors import InputError
    from cpmae.progress import Reporter
    from cpmae.train import data as D
    from cpmae.train.tokens import encode_pair

    brain_tok, nonbrain_tok, origin = _tokenizers(args)
    res = args.resolution or brain_tok.cfg.in_size
    for name, tok in (("brain", brain_tok), ("nonbrain", nonbrain_tok)):
        if tok.cfg.in_size != res:
            raise InputError(f"{name} tokenizer is for the {tok.cfg.in_size}³ grid, not {res}³")
    if args.data == "cohort":
        source = D.cohort_source(res, args.cohort_seed, args.count, 0, 1, D.default_disk_cache())
        ids = [f"cohort-s{args.cohort_seed}-{i:05d}" for i in range(args.count)]
    else:
        source = D.prepared_source(Path(args.data), res, args.count, 0, 1)
        manifest = D.read_manifest(Path(args.data))
        ids = [c["id"] for c in manifest["cases"] if str(res) in c.get("grids", {})][: source.n_train]
    shard, shards = _parse_shard(args.shard)
    out = args.out
    (out / "tokens").mkdir(parents=True, exist_ok=True)
    generator = cohort.GENERATOR_VERSION if args.data == "cohort" else ""
    _claim(out, brain_tok, nonbrain_tok, f"{args.data}|{args.cohort_seed}|{res}|{SHAPE_MAPS_VERSION}|{generator}")
    cases, with_shape = [], 0
    reporter = Reporter(args.progress)
    with reporter.stage("encode", total=len(ids)) as stage:
        for i, cid in enumerate(ids):
            rel = f"tokens/{cid}.npz"
            if (out / rel).is_file():  # written by an earlier (killed) run or another shard: resume
                with np.load(out / rel) as done:
                    with_shape += "shape" in done.files
                cases.append({"id": cid, "file": rel})
                stage.advance()
                continue
            if i % shards != shard:
                stage.advance()
                continue
            vol = source.train(i)
            brain, nonbrain, cond = encode_pair(brain_tok, nonbrain_tok, vol, args.device)
            # int16 holds any code of 12,800; occupancy (cpmae.conditions) as float16
            pair = {"brain": brain.astype(np.int16), "nonbrain": nonbrain.astype(np.int16),
                    "occupancy": cond[0].astype(np.float16)}
            shape = _shape_maps(args, res, i, vol, nonbrain_tok.cfg.factor)
            if shape is not None:
                pair["shape"] = shape.astype(np.float16)
                with_shape += 1
            tmp = out / "tokens" / f".{cid}.{os.getpid()}.tmp.npz"
            np.savez(tmp, **pair)
            os.replace(tmp, out / rel)
            cases.append({"id": cid, "file": rel})
            stage.advance()
    if len(cases) < len(ids):  # other shards still to come
        return out
    manifest = {"kind": "cpmae-tokens", "version": 1, "resolution": res, "token_size": brain_tok.cfg.token_size,
                "codebook_size": brain_tok.codebook_size, "levels": list(brain_tok.cfg.levels),
                "arch": int(brain_tok.cfg.arch), "tokenizers": origin, "data": source.description,
                "cohort_seeds": [int(args.cohort_seed)] if args.data == "cohort" else [],
                "shape_maps": with_shape == len(cases) and bool(cases), "shape_maps_version": SHAPE_MAPS_VERSION,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "cases": cases}
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return out


def _claim(out: Path, brain_tok, nonbrain_tok, data: str) -> None:
    """Pairs already in ``out`` are reused (resume, shards) only if the same tokenizer weights
    and data made them: a fingerprint of both is kept next to them."""
    import hashlib

    from cpmae.atomic import write_text_atomic
    from cpmae.errors import InputError

    h = hashlib.sha256(data.encode())
    for tok in (brain_tok, nonbrain_tok):
        for name, v in sorted(tok.state_dict().items()):
            h.update(name.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
    key = out / "tokens" / "fingerprint.txt"
    if key.is_file():
        if key.read_text(encoding="utf-8").strip() != h.hexdigest():
            raise InputError("holds token pairs of other tokenizers or data: encode into a new --out", path=out)
    else:
        write_text_atomic(key, h.hexdigest() + "\n")


def _parse_shard(spec: str):
    from cpmae.errors import InputError

    try:
        k, n = (int(v) for v in str(spec).split("/"))
    except ValueError:
        raise InputError(f"--shard must be K/N (e.g. 0/2), not {spec!r}") from None
    if not 0 <= k < n:
        raise InputError(f"--shard {spec}: K must be in 0..N-1")
    return k, n


def _shape_maps(args, res: int, index: int, vol, factor: int):
    """Face-shape maps of a generated subject: its own MakeHuman face placed by its brain as at
    de-identification, then moved onto the subject's actual skin (``conditions.training_shape_maps``),
    so the map says where the skin to draw is; None without a face seed."""
    if args.data != "cohort":
        return None
    from cpmae.conditions import grid_reference, training_shape_maps
    from cpmae.geometry import GRIDS
    from cpmae.train.data import subject_face_seed

    face_seed = subject_face_seed(res, args.cohort_seed, index)
    if face_seed is None:
        return None
    return training_shape_maps(face_seed, vol.brain, vol.image, grid_reference(vol.brain.shape, GRIDS[res].spacing),
                               factor)


def run(args) -> int:
    out = encode_dataset(args)
    print(out)
    return 0
