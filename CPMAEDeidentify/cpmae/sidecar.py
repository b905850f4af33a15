"""Scrub BIDS/dcm2niix JSON sidecars before they travel with de-identified images.

A sidecar written by dcm2niix carries the hospital's name and address, the scanner's serial
number, the station name and clock times next to the acquisition parameters that make the
scan usable (TE, TR, flip angle, field strength...). Trusting a list of "safe" keys would let
every new vendor field through, and trusting a list of "bad" keys alone would miss a free-text
field that happens to hold a name, so three rules apply, in order:

1. keys on a deny list of known identifying BIDS/DICOM fields are dropped (``DENY_KEYS``);
2. keys whose *name* looks identifying (Name, Date, Birth, Patient, Physician, Operator,
   Institution, Address, Serial, Station, UID, ID, Accession, Comment(s), e-mail, phone, clock
   times) are dropped unless they are known acquisition parameters (``KEEP_KEYS``, e.g.
   ``SequenceName``, ``ProtocolName``, ``ReceiveCoilName``, ``EchoTime``);
3. string *values* (except software version strings, ``VERSION_KEYS``) that look like a date, a clock time, a DICOM UID, an e-mail address, a phone
   number or an ID (five or more digits in a row) are dropped wherever they appear, as is any
   string containing the text of a field removed by rule 1 or 2 (so "Rigshospitalet" cannot
   survive inside a description).

Numbers and lists of numbers under keys that pass rules 1-2 are kept unchanged. See
docs/batch.md for the rationale and the full lists.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

from cpmae.errors import InputError
from cpmae.atomic import write_text_atomic

#: Known identifying fields (BIDS "Institution information", DICOM patient/study/equipment
#: identification, dcm2niix's anonymisation-sensitive output). Compared case-insensitively.
DENY_KEYS = frozenset(k.lower() for k in (
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "DeviceSerialNumber",
    "StationName", "PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "PatientBirthTime",
    "PatientAge", "PatientSex", "PatientWeight", "PatientSize", "PatientComments", "PatientAddress",
    "PatientTelephoneNumbers", "EthnicGroup", "ReferringPhysicianName", "PerformingPhysicianName",
    "RequestingPhysician", "OperatorsName", "OperatorName", "PhysiciansOfRecord", "AccessionNumber",
    "StudyID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
    "StudyDate", "StudyTime", "SeriesDate", "SeriesTime", "AcquisitionDate", "AcquisitionTime",
    "AcquisitionDateTime", "ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "ProcedureStepDescription",
    "PerformedProcedureStepDescription", "RequestedProcedureDescription", "StudyDescription",
    "ImageComments", "StudyComments", "ScheduledProcedureStepDescription", "AdmittingDiagnosesDescription",
    "MedicalAlerts", "Allergies", "PregnancyStatus", "Occupation", "AdditionalPatientHistory",
    "DateOfLastCalibration", "TimeOfLastCalibration", "DeidentificationMethod",
))

#: Acquisition parameters whose key name would trip rule 2 but which identify no one.
KEEP_KEYS = frozenset(k.lower() for k in (
    "SequenceName", "PulseSequenceName", "ProtocolName", "ReceiveCoilName", "TransmitCoilName",
    "ManufacturersModelName", "SeriesDescription", "CoilString", "EchoTime", "RepetitionTime",
    "InversionTime", "DwellTime", "EffectiveEchoSpacing", "TotalReadoutTime", "SliceTiming",
    "DelayTime", "AcquisitionDuration", "RepetitionTimeExcitation", "RepetitionTimePreparation",
    "MixingTime", "FrameTimesStart", "FrameDuration", "ScanStart", "InjectionStart",
    "ModeOfAcquisition", "AcquisitionMatrixPE", "AcquisitionNumber", "SeriesNumber",
    "ImageOrientationPatientDICOM", "PatientPosition", "ReceiveCoilActiveElements",
))

#: Machine-written software/build identifiers: their dates are release dates, not visit dates, so
#: rule 3's date/ID patterns do not apply (the removed-text check still does).
VERSION_KEYS = frozenset(k.lower() for k in ("SoftwareVersions", "ConversionSoftwareVersion", "ConsistencyInfo"))

_KEY_PATTERN = re.compile(
    r"name|date|birth|patient|physician|operator|institution|address|serial|station|^uids?$"
    r"|accession|comment|e-?mail|phone|telephone|^ids?$"
    r"|^(?:acquisition|study|series|content|instancecreation|scan)time$",
    re.IGNORECASE,
)
_ID_SUFFIX = re.compile(r"[a-z_](?:ID|Id)s?$|UID")  # PatientID, StudyId, Other_IDs, SeriesUID (not "Fluid")

_VALUE_PATTERNS = [
    re.compile(r"\b(?:19|20)\d\d[-/.]?(?:0[1-9]|1[0-2])[-/.]?(?:0[1-9]|[12]\d|3[01])"),  # 2021-03-17, 20210317
    re.compile(r"\b(?:0?[1-9]|[12]\d|3[01])[-/.](?:0?[1-9]|1[0-2])[-/.](?:19|20)?\d\d\b"),  # 17.03.2021
    re.compile(r"\b(?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d)?"),  # 15:31:52
    re.compile(r"\b\d+(?:\.\d+){4,}\b"),  # DICOM UID 1.2.840.113619....
    re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+"),  # e-mail
    re.compile(r"\+?\d[\d ()-]{7,}\d"),  # phone number
    re.compile(r"\d{5,}"),  # serial numbers, patient IDs, accession numbers, compact dates
]

Json = Union[Dict[str, Any], List[Any], str, int, float, bool, None]


def key_is_identifying(key: str) -> bool:
    """Rules 1 and 2: is this key dropped whatever its value?"""
    low = key.lower()
    if low in DENY_KEYS:
        return True
    if low in KEEP_KEYS:
        return False
    return bool(_KEY_PATTERN.search(key) or _ID_SUFFIX.search(key))


def value_looks_identifying(value: str) -> bool:
    """Rule 3 (first half): does this text look like a date, time, UID, e-mail, phone or ID?"""
    return any(p.search(value) for p in _VALUE_PATTERNS)


def _collect_strings(value: Json) -> List[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _collect_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _collect_strings(v)]
    return []


def scrub_sidecar(sidecar: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """Return (clean copy, sorted list of dropped key paths) of a sidecar dictionary."""
    dropped: List[str] = []
    removed_text: List[str] = []

    def first_pass(obj: Json, prefix: str) -> Json:
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                path = f"{prefix}{k}"
                if key_is_identifying(str(k)):
                    dropped.append(path)
                    removed_text.extend(s.strip() for s in _collect_strings(v))
                    continue
                out[k] = first_pass(v, path + ".")
            return out
        return obj

    stage1 = first_pass(sidecar, "")
    needles = sorted({s.lower() for s in removed_text if len(s) >= 3}, key=len, reverse=True)

    def bad_text(s: str, key: str) -> bool:
        low = s.lower()
        if any(n in low for n in needles):
            return True
        return key.lower() not in VERSION_KEYS and value_looks_identifying(s)

    def second_pass(obj: Json, path: str) -> Tuple[bool, Json]:
        """(keep?, cleaned value); a container keeps its good items."""
        if isinstance(obj, str):
            return (not bad_text(obj, path.rsplit(".", 1)[-1])), obj
        if isinstance(obj, dict):
            out = {}
            for k, v in obj.items():
                keep, cv = second_pass(v, f"{path}.{k}" if path else str(k))
                if keep:
                    out[k] = cv
                else:
                    dropped.append(f"{path}.{k}" if path else str(k))
            return True, out
        if isinstance(obj, list):
            # a list with one identifying string is dropped whole: positions carry meaning
            items = [second_pass(v, path) for v in obj]
            if all(keep for keep, _ in items):
                return True, [cv for _, cv in items]
            return False, None
        return True, obj

    _, clean = second_pass(stage1, "")
    return clean, sorted(set(dropped))


def load_sidecar(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a JSON sidecar; anything but a JSON object is a clear InputError."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("sidecar JSON not found", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read sidecar JSON ({exc.__class__.__name__})", path=path) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"sidecar is not valid JSON (line {exc.lineno}: {exc.msg})", path=path) from None
    if not isinstance(data, dict):
        raise InputError("sidecar JSON is not an object", path=path)
    return data


def write_scrubbed_sidecar(src: Union[str, Path], dst: Union[str, Path]) -> List[str]:
    """Copy sidecar ``src`` to ``dst`` (atomically) without identifying fields; return what was dropped."""
    clean, dropped = scrub_sidecar(load_sidecar(src))
    write_text_atomic(dst, json.dumps(clean, indent=2, ensure_ascii=False) + "\n")
    return dropped
