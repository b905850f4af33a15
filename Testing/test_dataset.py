"""One reading of a folder of scans: batch, prepare and audit see the same scans and masks."""
from pathlib import Path

import pytest

from cpmae import dataset
from cpmae.audit.dataset import discover_scans
from cpmae.batch import discover_cases
from cpmae.errors import InputError
from cpmae.train.prepare import find_mask as prepare_find_mask
from cpmae.train.prepare import find_scans as prepare_find_scans


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.mark.parametrize("name, is_mask", [
    ("a_mask.nii.gz", True), ("sub-01_desc-brain_mask.nii.gz", True), ("sub-01_T1w_defacemask.nii.gz", True),
    ("sub-01_dseg.nii.gz", True), ("sub-01_probseg.nrrd", True), ("a-brainmask.mha", True), ("a.label.nii", True),
    ("sub-01_T1w.nii.gz", False), ("masked_nothing.nii", False), ("sub-01_T2w.nrrd", False), ("segal.nii", False),
])
def test_mask_rule(name, is_mask):
    assert dataset.is_mask_name(name) is is_mask


def test_suffixes_are_one_list():
    from cpmae import io

    assert set(io.READ_IO) == set(dataset.IMAGE_SUFFIXES)
    assert dataset.image_suffix("A.NII.GZ") == ".nii.gz" and dataset.image_suffix("a.nii.bz2") == ""
    assert dataset.strip_image_suffix("Sub_01.Nii.Gz") == "Sub_01" and dataset.strip_image_suffix("x.txt") is None
    assert io.image_extension("a.txt") == ".txt"


def test_bids_folder_read_the_same_by_batch_prepare_and_audit(tmp_path):
    root = tmp_path / "bids"
    t1 = [_touch(root / "sub-01/anat/sub-01_T1w.nii.gz"), _touch(root / "sub-02/ses-1/anat/sub-02_ses-1_T1w.nrrd")]
    t2 = _touch(root / "sub-01/anat/sub-01_T2w.nii.gz")
    own_mask = _touch(root / "sub-01/anat/sub-01_T1w_mask.nii.gz")
    _touch(root / "sub-01/anat/sub-01_T1w_defacemask.nii.gz")
    _touch(root / "sub-01/anat/.sub-01_T1w.nii.gz.cpmae-tmp-x.nii.gz")
    deriv = _touch(root / "derivatives/bet/sub-02/ses-1/anat/sub-02_ses-1_desc-brain_mask.nii.gz")
    _touch(root / "derivatives/bet/sub-03/anat/sub-03_T1w.nii.gz")  # derivatives hold no scans

    layout, cases = discover_cases(root)
    assert layout == "bids" and [c.in_path for c in cases] == sorted(t1 + [t2])  # every face-bearing image
    assert prepare_find_scans(root) == sorted(t1)
    audit = discover_scans(root)
    assert [s.image for s in audit] == sorted(t1)
    assert [s.mask for s in audit] == [own_mask, deriv]
    assert [prepare_find_mask(p, None, root) for p in sorted(t1)] == [own_mask, deriv]


def test_flat_folder_read_the_same_by_batch_prepare_and_audit(tmp_path):
    root = tmp_path / "flat"
    scans = [_touch(root / "a.nii.gz"), _touch(root / "b.nrrd"), _touch(root / "c.mha")]
    mask = _touch(root / "a_mask.nii.gz")
    _touch(root / "b-brain-mask.nii.gz")
    _touch(root / "notes.txt")
    _touch(root / "nested/d.nii.gz")  # a flat folder is read one level deep

    layout, cases = discover_cases(root)
    assert layout == "flat" and [c.in_path for c in cases] == scans  # the mask is not de-identified as a head
    assert prepare_find_scans(root) == scans
    audit = discover_scans(root)
    assert [(s.image, s.mask) for s in audit] == [(scans[0], mask), (scans[1], root / "b-brain-mask.nii.gz"),
                                                   (scans[2], None)]
    assert prepare_find_mask(scans[0], None, root) == mask


def test_mask_dir_and_missing_folder(tmp_path):
    scan = _touch(tmp_path / "data/x.nii.gz")
    given = _touch(tmp_path / "masks/x.nrrd")
    assert dataset.find_mask(scan, root=tmp_path / "data", mask_dir=tmp_path / "masks") == given
    with pytest.raises(InputError, match="does not exist"):
        dataset.find_scans(tmp_path / "nope")
