"""Provenance records: what made an output, and nothing from the input (cpmae.provenance)."""
from __future__ import annotations

import datetime as dt
import json

from cpmae import __version__
from cpmae.provenance import (INFO_FIELDS, SUFFIX, build_record, file_sha256, provenance_path,
                              write_provenance)

INFO = {"weights_sha256": "ab" * 32, "seed": 5, "steps": 8, "resolution": 128, "changed_voxels": 1234,
        "version": __version__, "method": "cpmae", "device": "cpu"}
# things an engine info dict might one day carry that must never reach a shared record
INPUT_DERIVED = {"descrip": "TE=2.5;Time=153152.362;phase=1", "source": "/data/hospital/jane_doe/t1.nii.gz",
                 "input_sha256": "cd" * 32, "aux_file": "JDOE"}


def test_record_has_the_documented_fields_and_nothing_from_the_input():
    when = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
    rec = build_record({**INFO, **INPUT_DERIVED}, "sub-01_T1w.nii.gz", "ef" * 32, seed=5, now=when)
    assert set(rec) == {"method", "software", "version", "weights_sha256", "seed", "steps", "resolution",
                        "changed_voxels", "created_utc", "output", "output_sha256"}
    assert rec["weights_sha256"] == "ab" * 32 and rec["seed"] == 5 and rec["changed_voxels"] == 1234
    assert rec["created_utc"] == "2024-05-06T07:08:09Z" and rec["version"] == __version__
    text = json.dumps(rec)
    for v in INPUT_DERIVED.values():
        assert v not in text
    assert set(INFO_FIELDS) <= set(rec) | {"seed"}


def test_written_next_to_the_output_with_its_hash(tmp_path):
    out = tmp_path / "sub-01_T1w.nii.gz"
    out.write_bytes(b"image bytes")
    rec = write_provenance(out, INFO, seed=3)
    path = provenance_path(out)
    assert path.name == "sub-01_T1w.nii.gz" + SUFFIX
    assert json.loads(path.read_text(encoding="utf-8")) == rec
    assert rec["output_sha256"] == file_sha256(out) and rec["output"] == out.name and rec["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, path.name])


def test_file_sha256_streams_large_files(tmp_path):
    import hashlib

    p = tmp_path / "big.bin"
    data = bytes(range(256)) * 20000  # 5 MB: several chunks
    p.write_bytes(data)
    assert file_sha256(p, chunk=1 << 16) == hashlib.sha256(data).hexdigest()
