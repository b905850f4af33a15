"""``cpmae prepare DATA_DIR OUT_DIR``: a folder of scans (or a BIDS dataset) -> a training dataset."""
from __future__ import annotations

from pathlib import Path

from cpmae.device import DEVICE_HELP
from cpmae.geometry import GRIDS


def register(sub) -> None:
    p = sub.add_parser("prepare", help="preprocess a folder of scans / a BIDS dataset for training (cached)")
    p.add_argument("data_dir", type=Path, help="folder of NIfTI/NRRD/MHA files, or a BIDS dataset root")
    p.add_argument("out_dir", type=Path, help="dataset folder to write (rerunning only processes changes)")
    p.add_argument("--resolution", type=int, nargs="+", choices=sorted(GRIDS), default=sorted(GRIDS),
                   help="model grid(s) to prepare")
    p.add_argument("--masks", type=Path, help="folder of brain masks named like the scans; without one, "
                   "<scan>_mask.* next to a scan is used, else deepbet (cached)")
    p.add_argument("--device", default="cpu", help="device for deepbet (default cpu): " + DEVICE_HELP)
    p.add_argument("--limit", type=int, default=0, help="only the first N scans (0 = all)")
    p.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto")
    p.set_defaults(func=run)


def run(args) -> int:
    from cpmae.progress import Reporter
    from cpmae.train.prepare import prepare

    reporter = Reporter(args.progress)
    path, manifest = prepare(args.data_dir, args.out_dir, args.resolution, args.masks, args.device, reporter,
                             args.limit)
    print(f"{path}: {len(manifest['cases'])} cases prepared, {len(manifest['skipped'])} skipped")
    for s in manifest["skipped"]:
        print(f"  skipped {s['source']}: {s['reason']}")
    return 0 if manifest["cases"] else 2
