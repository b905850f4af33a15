"""Scrub BIDS/dcm2niix JSON sidecars before they travel with de-identified images.

A sidecar written by dcm2niix carries the hospital's name and address, the scanner's serial
number, the station name and clock times next to the acquisition parameters that make the
scan usable (TE, TR, flip angle, field strength...). A deny-list of "bad" keys cannot keep up
with vendors and sites: any key it does not know (``Hospital``, ``ReferringDoctor``, a nested
``Private.Site``, a number under ``MRN`` or ``ScannerLabel``) went through. So the rule is an
**allow-list**:

1. a key is kept only when it is a known BIDS acquisition field (``ALLOW_KEYS``: the MRI
   "scanner hardware", "sequence specifics", "in-plane encoding", "timing", "RF & contrast"
   and "slice acceleration" fields of the BIDS specification, plus dcm2niix's acquisition
   extras); everything else is dropped, numbers and nested objects included;
2. a kept value must be a number, a boolean, a string, or a list of those (an object under
   a kept key is dropped: no BIDS acquisition field is an object);
3. a kept string (except software version strings, ``VERSION_KEYS``) that looks like a date, a
   clock time, a DICOM UID, an e-mail address, a phone number or an ID (five or more digits in
   a row) is dropped, as is any kept string holding the text of a dropped field (so
   "Rigshospitalet" cannot survive inside a ``SeriesDescription``). A list with one such
   string is dropped whole (positions carry meaning).

``scrub_sidecar`` returns the dropped key *names* (never their values); the batch logs them
and lists them in the provenance record. See docs/batch.md.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

from cpmae.errors import InputError
from cpmae.atomic import write_text_atomic

#: BIDS MRI acquisition fields (BIDS 1.9 "Common metadata fields" for MRI and anatomical data)
#: and dcm2niix's acquisition extras. Exact, case-sensitive names, as BIDS defines them.
ALLOW_KEYS = frozenset((
    # scanner hardware (never Institution*, DeviceSerialNumber, StationName)
    "Modality", "Manufacturer", "ManufacturersModelName", "SoftwareVersions", "MagneticFieldStrength",
    "ReceiveCoilName", "ReceiveCoilActiveElements", "GradientSetType", "MRTransmitCoilSequence", "MatrixCoilMode",
    "CoilCombinationMethod", "CoilString", "TransmitCoilName", "ImagingFrequency", "BodyPartExamined",
    "PatientPosition",
    # sequence specifics
    "PulseSequenceType", "ScanningSequence", "SequenceVariant", "ScanOptions", "SequenceName",
    "PulseSequenceName", "PulseSequenceDetails", "NonlinearGradientCorrection", "MRAcquisitionType",
    "MTState", "MTOffsetFrequency", "MTPulseBandwidth", "MTNumberOfPulses", "MTPulseShape", "MTPulseDuration",
    "SpoilingState", "SpoilingType", "SpoilingRFPhaseIncrement", "SpoilingGradientMoment",
    "SpoilingGradientDuration", "SeriesDescription", "ProtocolName", "ImageType", "SeriesNumber",
    "AcquisitionNumber", "NumberOfAverages", "EchoTrainLength", "EchoNumber", "ImageTypeText",
    # in-plane spatial encoding
    "NumberShots", "ParallelReductionFactorInPlane", "ParallelReductionFactorOutOfPlane",
    "ParallelAcquisitionTechnique", "PartialFourier", "PartialFourierDirection", "PhaseEncodingDirection",
    "EffectiveEchoSpacing", "TotalReadoutTime", "MixingTime", "DwellTime", "PixelBandwidth",
    "AcquisitionMatrixPE", "ReconMatrixPE", "BaseResolution", "PhaseResolution", "PercentPhaseFOV",
    "PercentSampling", "PhaseEncodingSteps", "PhaseEncodingStepsNoPartialFourier", "FrequencyEncodingSteps",
    "PhaseEncodingPolarityGE", "InPlanePhaseEncodingDirectionDICOM", "ImageOrientationPatientDICOM",
    "ImageOrientationText", "SliceThickness", "SpacingBetweenSlices", "RefLinesPE", "ShimSetting",
    # timing
    "EchoTime", "InversionTime", "SliceTiming", "SliceEncodingDirection", "RepetitionTime",
    "RepetitionTimeExcitation", "RepetitionTimePreparation", "VolumeTiming", "AcquisitionDuration", "DelayTime",
    "DelayAfterTrigger", "NumberOfVolumesDiscardedByScanner", "NumberOfVolumesDiscardedByUser",
    # RF & contrast
    "FlipAngle", "NegativeContrast", "SAR", "TxRefAmp", "ContrastBolusIngredient",
    # slice acceleration
    "MultibandAccelerationFactor",
    # how the file was made
    "ConversionSoftware", "ConversionSoftwareVersion", "ConsistencyInfo",
))

#: Machine-written software/build identifiers: their dates are release dates, not visit dates, so
#: rule 3's date/ID patterns do not apply (the removed-text check still does).
VERSION_KEYS = frozenset(("SoftwareVersions", "ConversionSoftwareVersion", "ConsistencyInfo"))

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


def key_is_allowed(key: str) -> bool:
    """Rule 1: is this a known BIDS acquisition field?"""
    return key in ALLOW_KEYS


def value_looks_identifying(value: str) -> bool:
    """Rule 3 (first half): does this text look like a date, time, UID, e-mail, phone or ID?"""
    return any(p.search(value) for p in _VALUE_PATTERNS)


def _collect_strings(value: Json) -> List[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [str(k)] + _collect_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _collect_strings(v)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [str(value)]  # a dropped MRN must not survive as text elsewhere either
    return []


def _plain(value: Json) -> bool:
    """Rule 2: a number, boolean, string or list of those (no objects, no null)."""
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return isinstance(value, (str, int, float, bool))


def scrub_sidecar(sidecar: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """Return (clean copy, sorted names of the dropped top-level keys) of a sidecar dictionary."""
    dropped: List[str] = []
    removed_text: List[str] = []
    kept: Dict[str, Any] = {}
    for key, value in sidecar.items():
        if key_is_allowed(str(key)) and _plain(value):
            kept[key] = value
        else:
            dropped.append(str(key))
            removed_text.extend(s.strip() for s in _collect_strings(value))
    needles = sorted({s.lower() for s in removed_text if len(s) >= 3}, key=len, reverse=True)

    def bad_text(text: str, key: str) -> bool:
        low = text.lower()
        if any(n in low for n in needles if len(n) >= 4 or n == low):  # 3 characters: only the whole text
            return True
        return key not in VERSION_KEYS and value_looks_identifying(text)

    def bad(value: Json, key: str) -> bool:
        if isinstance(value, str):
            return bad_text(value, key)
        if isinstance(value, list):
            return any(bad(v, key) for v in value)
        return False

    clean = {}
    for key, value in kept.items():
        if bad(value, key):
            dropped.append(key)
        else:
            clean[key] = value
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
    """Copy sidecar ``src`` to ``dst`` (atomically) with only its acquisition fields; return the dropped key names."""
    clean, dropped = scrub_sidecar(load_sidecar(src))
    write_text_atomic(dst, json.dumps(clean, indent=2, ensure_ascii=False) + "\n")
    return dropped
