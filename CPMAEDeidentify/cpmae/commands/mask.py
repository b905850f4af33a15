"""``cpmae mask IN OUT``: the brain mask the de-identification would keep, for checking by eye."""
from __future__ import annotations

from cpmae.device import DEVICE_HELP


def register(sub) -> None:
    p = sub.add_parser("mask", help="compute, check and write the deepbet brain mask of a head MRI",
                       description="Compute the brain mask (deepbet), refuse it if implausible (empty, outside "
                       "800-2200 cm³, touching the border) and write it as uint8 NIfTI/NRRD.")
    p.add_argument("input", metavar="IN", help="head MRI: .nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd or a DICOM folder")
    p.add_argument("output", metavar="OUT", help="mask to write: .nii.gz, .nii or .nrrd")
    p.add_argument("--device", default="cpu", help="device for deepbet (default cpu): " + DEVICE_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)


def run(args) -> int:
    from cpmae.brainmask import compute_brain_mask, validate_mask
    from cpmae.io import check_output_path, read_image, write_image

    check_output_path(args.output, inputs=[args.input], overwrite=args.overwrite)  # fail before the work
    img = read_image(args.input)
    mask = compute_brain_mask(img, device=args.device, path=args.input)
    volume = validate_mask(mask, path=args.input)
    out = write_image(mask, args.output, overwrite=args.overwrite)
    print(f"brain volume: {volume:.0f} cm³")
    print(f"mask: {out}")
    return 0
