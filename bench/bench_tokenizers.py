"""What one tokenizer round trip costs, per architecture and grid, against issue 13's stage budget.

The stages around the model at 256³ (grid, encode, decode, blend, write) have a budget of
``bench_deidentify.AROUND_BUDGET_S`` on 2 cores. Encode and decode are the tokenizers' share of
it; this prints what each architecture's tokenizer costs there, whatever weights a bundle ships
(a convolution costs the same for any weights), so a design can be checked against the budget
before it is trained. Architecture 1 is the 2026-11 demonstration weights' design; architecture
2 the local one with 12,800 codes that carries a face (``cpmae.models.tokenizer``).

    python bench/bench_tokenizers.py [--repeat 3] [--threads 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def time_round_trip(arch: int, side: int, repeat: int) -> dict:
    """Best wall and process-CPU seconds of encode and decode of one whole model-grid volume."""
    import torch

    from cpmae.models.build import build

    tok = build("tokenizer", {"arch": arch, "in_size": side}).eval()
    x = torch.rand(1, 1, side, side, side) * 0.5  # above the air level everywhere: no cell is skipped
    best = {}
    with torch.inference_mode():
        tokens = tok.encode(x)  # warm-up: oneDNN picks its kernels on the first call
        tok.decode(tokens)
        for _ in range(repeat):
            for name, fn in (("encode", lambda: tok.encode(x)), ("decode", lambda: tok.decode(tokens))):
                w0, c0 = time.perf_counter(), time.process_time()
                fn()
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                if name not in best or wall < best[name][0]:
                    best[name] = (wall, cpu)
    return {"parameters": sum(p.numel() for p in tok.parameters()), "codes": tok.codebook_size,
            **{f"{k}_s": round(v[0], 3) for k, v in best.items()},
            **{f"{k}_cpu_s": round(v[1], 3) for k, v in best.items()}}


def main() -> int:
    import torch

    from bench_deidentify import AROUND_BUDGET_S
    from cpmae.geometry import GRIDS
    from machine import banner, describe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is reported")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the budget is for 2 cores)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(banner())
    rows = []
    print(f"{'grid':>5} {'arch':>4} {'params':>9} {'codes':>6} {'encode s':>9} {'decode s':>9} {'both s':>7}  "
          f"share of the {AROUND_BUDGET_S} s budget")
    for side in sorted(GRIDS):
        for arch in (1, 2):
            r = {"grid": side, "arch": arch, **time_round_trip(arch, side, args.repeat)}
            both = r["encode_s"] + r["decode_s"]
            print(f"{side:>5} {arch:>4} {r['parameters']:>9,} {r['codes']:>6} {r['encode_s']:9.3f} {r['decode_s']:9.3f} "
                  f"{both:7.3f}  {both / AROUND_BUDGET_S:.0%}", flush=True)
            rows.append(r)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": describe(), "results": rows}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
