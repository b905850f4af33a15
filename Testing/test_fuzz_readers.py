"""Short fuzzing of ``cpmae.io.read_image`` on mutated NIfTI and NRRD files.

A reader that meets a damaged file must answer with one ``InputError`` line naming the file,
never another exception (a traceback), a crash, a hang or an allocation the header merely
claims. ITK is C++: a crash or an endless loop there would take pytest down with it, so every
read runs in a separate worker process (``ReaderWorker``) that is killed and restarted when it
does not answer within ``READ_TIMEOUT_S`` or dies.
Hypothesis mutates small valid files: flipped bytes (mostly in the header), header fields set
to extreme values, truncation, and edited NRRD header lines. Each failure is shrunk to a
minimal mutation by Hypothesis, which makes it a ready-made bug report.
"""
from __future__ import annotations

import gzip
import multiprocessing
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpmae.errors import InputError
from cpmae.io import read_image

FUZZ = settings(max_examples=100, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def small_head(n: int = 16, spacing: float = 8.0) -> sitk.Image:
    rng = np.random.default_rng(0)
    img = sitk.GetImageFromArray(rng.integers(0, 1000, (n, n, n)).astype(np.int16))
    img.SetSpacing((spacing,) * 3)
    return img


def valid_bytes(suffix: str, compress: bool = False) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"head{suffix}"
        sitk.WriteImage(small_head(), str(p), compress)
        return p.read_bytes()


NIFTI = valid_bytes(".nii")
NRRD_RAW = valid_bytes(".nrrd", compress=False)
NRRD_GZ = valid_bytes(".nrrd", compress=True)

# (offset, struct format) of NIfTI-1 header fields worth breaking
NIFTI_FIELDS = [(0, "<i"), (40, "<8h"), (70, "<h"), (72, "<h"), (76, "<8f"), (108, "<f"), (112, "<f"),
                (116, "<f"), (252, "<h"), (254, "<h"), (280, "<4f"), (344, "<4s")]
EXTREME_INTS = [0, 1, -1, 2, 3, 4, 7, 8, 255, 256, 32767, -32768, 2 ** 31 - 1, -2 ** 31]
EXTREME_FLOATS = [0.0, -0.0, 1e-30, -1.0, 1e30, float("nan"), float("inf"), float("-inf"), 1e-45]


READ_TIMEOUT_S = 20.0  # a 16³ file reads in milliseconds; this is generous for a loaded 2-core CI box


def _serve(conn) -> None:
    """Worker loop: read each path sent, answer with what happened (never raises)."""
    from cpmae.errors import InputError as _InputError
    from cpmae.io import read_image as _read

    while True:
        path = conn.recv()
        try:
            img = _read(path)
            conn.send(("image", img.GetDimension(), None))
        except _InputError as exc:
            conn.send(("input_error", exc.path, str(exc)))
        except BaseException as exc:  # noqa: BLE001 - reported to the test, which fails on it
            conn.send(("other", type(exc).__name__, str(exc)[:300]))


class ReaderWorker:
    """A reader process that survives nothing bad happening to the test process."""

    def __init__(self):
        self._proc = None

    def _start(self):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self._proc.start()

    def read(self, path: Path):
        if self._proc is None or not self._proc.is_alive():
            self._start()
        self._conn.send(str(path))
        if not self._conn.poll(READ_TIMEOUT_S):
            self.stop()
            return ("hang", None, f"no answer within {READ_TIMEOUT_S:g} s")
        try:
            return self._conn.recv()
        except EOFError:
            code = self._proc.exitcode
            self.stop()
            return ("crash", None, f"reader process died (exit code {code})")

    def stop(self):
        if self._proc is not None:
            self._proc.kill()
            self._proc.join(5)
            self._proc = None


@pytest.fixture(scope="module")
def reader():
    w = ReaderWorker()
    yield w
    w.stop()


def check(reader: ReaderWorker, path: Path) -> None:
    """The only acceptable outcomes: a 3-D image, or an InputError naming this file."""
    kind, a, b = reader.read(path)
    if kind == "input_error":
        assert a is not None and Path(a).name == path.name, f"error does not name the file: {b}"
        assert "\n" not in b, f"error is not one line: {b!r}"
        return
    assert kind == "image" and a == 3, f"read_image: {kind}: {a}: {b}"


@st.composite
def byte_flips(draw, data: bytes, hot: int):
    """Up to 8 random bytes changed, most of them in the first ``hot`` bytes (the header)."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        limit = hot if draw(st.booleans()) or draw(st.booleans()) else len(buf)
        buf[draw(st.integers(0, min(limit, len(buf)) - 1))] = draw(st.integers(0, 255))
    return bytes(buf)


@st.composite
def nifti_field_edits(draw):
    buf = bytearray(NIFTI)
    for _ in range(draw(st.integers(1, 3))):
        off, fmt = draw(st.sampled_from(NIFTI_FIELDS))
        count = struct.calcsize(fmt) // struct.calcsize(fmt[-1])
        if fmt[-1] == "s":
            vals = [draw(st.binary(min_size=4, max_size=4))]
        elif fmt[-1] == "f":
            vals = [draw(st.sampled_from(EXTREME_FLOATS) | st.floats(width=32)) for _ in range(count)]
        else:
            lo, hi = (-2 ** 31, 2 ** 31 - 1) if fmt[-1] == "i" else (-32768, 32767)
            vals = [draw(st.sampled_from([v for v in EXTREME_INTS if lo <= v <= hi]) | st.integers(lo, hi))
                    for _ in range(count)]
        struct.pack_into(fmt, buf, off, *vals)
    return bytes(buf)


def header_end(nrrd: bytes) -> int:
    return nrrd.index(b"\n\n") + 2


@st.composite
def nrrd_line_edits(draw, data: bytes):
    head, body = data[: header_end(data)].decode("latin-1"), data[header_end(data):]
    lines = head.rstrip("\n").split("\n")
    tokens = ["0", "-1", "3", "99999999", "1e308", "nan", "inf", "(nan,0,0)", "(0,0,0)", "none", "gzip", "raw",
              "double", "int64", "block", "2", "16 16", "16 16 16 16", "", "left-posterior-superior", "???"]
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(1, len(lines) - 1))
        if ":" in lines[i]:
            key = lines[i].split(":", 1)[0]
            lines[i] = f"{key}: {draw(st.sampled_from(tokens) | st.text(max_size=12))}"
        else:
            lines[i] = draw(st.text(max_size=20)).replace("\n", " ")
    if draw(st.booleans()):
        lines.pop(draw(st.integers(1, len(lines) - 1)))
    return ("\n".join(lines) + "\n\n").encode("utf-8", "replace") + body


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_the_unmutated_files_read():
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        for name, data in (("a.nii", NIFTI), ("b.nrrd", NRRD_RAW), ("c.nrrd", NRRD_GZ), ("d.nii.gz", gzip.compress(NIFTI))):
            assert read_image(write(Path(d), name, data)).GetSize() == (16, 16, 16)


def test_nifti_with_inf_in_the_sform_is_refused_not_hung(reader, tmp_path):
    """Found by this fuzzer: ITK's NIfTI reader loops forever on an infinite sform entry."""
    buf = bytearray(NIFTI)
    struct.pack_into("<4f", buf, 280, 0.0, 0.0, -8.0, float("inf"))  # srow_x
    check(reader, write(tmp_path, "inf-sform.nii", bytes(buf)))


@FUZZ
@given(data=byte_flips(NIFTI, hot=352))
def test_nifti_byte_flips(reader, tmp_path, data):
    check(reader, write(tmp_path, "flip.nii", data))


@FUZZ
@given(data=nifti_field_edits())
def test_nifti_header_fields_set_to_extremes(reader, tmp_path, data):
    check(reader, write(tmp_path, "field.nii", data))


@FUZZ
@given(data=nifti_field_edits(), gz_cut=st.integers(0, 400))
def test_gzipped_nifti_with_bad_header_or_cut_stream(reader, tmp_path, data, gz_cut):
    packed = gzip.compress(data)
    check(reader, write(tmp_path, "field.nii.gz", packed[: len(packed) - gz_cut]))


@FUZZ
@given(data=byte_flips(NRRD_RAW, hot=header_end(NRRD_RAW)))
def test_nrrd_byte_flips(reader, tmp_path, data):
    check(reader, write(tmp_path, "flip.nrrd", data))


@FUZZ
@given(data=st.sampled_from([NRRD_RAW, NRRD_GZ]).flatmap(nrrd_line_edits))
def test_nrrd_header_lines_edited(reader, tmp_path, data):
    check(reader, write(tmp_path, "edit.nrrd", data))


@FUZZ
@given(which=st.sampled_from(["nii", "nrrd", "nrrd.gz"]), cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_files(reader, tmp_path, which, cut):
    data = {"nii": NIFTI, "nrrd": NRRD_RAW, "nrrd.gz": NRRD_GZ}[which]
    check(reader, write(tmp_path, f"cut.{which.split('.')[0]}", data[: int(len(data) * cut)]))
