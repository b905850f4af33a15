"""``cpmae render IN OUT_DIR``: face renderings of a scan (and of its de-identified copy) as PNG."""
from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("render", help="render the face of a scan (frontal / profile) as PNG",
                       description="Offscreen skin renderings with fixed cameras: frontal (from the front, "
                       "superior up) and profile (from the subject's right). With --compare, both scans are "
                       "rendered with the first scan's threshold and camera into one before/after grid. "
                       "Existing PNGs of the same name are replaced.")
    p.add_argument("input", help="scan: .nii/.nii.gz/.nrrd/.mha or a DICOM series folder")
    p.add_argument("out_dir", help="folder for the PNGs (created if missing)")
    p.add_argument("--views", default="frontal,profile",
                   help="comma-separated views among frontal, three_quarter_left, three_quarter_right, "
                   "profile_left, profile_right (alias profile), below, or 'standard' for all six "
                   "(default: frontal,profile)")
    p.add_argument("--compare", default=None, metavar="OTHER",
                   help="a second scan (e.g. the de-identified output): also write a before/after grid")
    p.add_argument("--size", type=int, default=320, help="picture width and height in pixels (default 320)")
    p.add_argument("--singles", action="store_true",
                   help="with --compare: also write each before/after picture as its own PNG")
    p.set_defaults(func=run)


def _stem(path: str) -> str:
    from cpmae.io import image_extension

    name = Path(path.rstrip("/")).name
    ext = image_extension(name)
    return name[: -len(ext)] if ext and name.lower().endswith(ext) else name


def run(args) -> int:
    from cpmae.errors import InputError
    from cpmae.io import read_image
    from cpmae.render import ALL_VIEWS, STANDARD_VIEWS, before_after_figure, render_views, save_png

    views = tuple(v.strip() for v in args.views.split(",") if v.strip())
    if views == ("standard",):
        views = STANDARD_VIEWS
    unknown = [v for v in views if v not in ALL_VIEWS]
    if not views or unknown:
        raise InputError(f"--views must list some of {', '.join(ALL_VIEWS)}; got {args.views!r}")
    if not 16 <= args.size <= 4096:
        raise InputError(f"--size must be between 16 and 4096 pixels, got {args.size}")
    size = (args.size, args.size)
    out_dir = Path(args.out_dir)
    image = read_image(args.input)
    other = read_image(args.compare) if args.compare else None
    stem = _stem(args.input)
    written = [save_png(picture, out_dir / f"{stem}_{view}.png")
               for view, picture in render_views(image, views, size).items()]
    if other is not None:
        other_stem = _stem(args.compare)
        labels = (stem, other_stem) if other_stem != stem else ("before", "after")
        written += before_after_figure(image, other, out_dir / f"{stem}_vs_{other_stem}.png",
                                       labels=labels, views=views, size=size,
                                       singles=bool(getattr(args, "singles", False)))
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0
