"""The parameter node declaration against the value types Slicer's serializers accept.

Slicer's ``parameterNodeWrapper`` (Base/Python/slicer/parameterNodeWrapper/serializers.py, 5.8
to main) picks one serializer per field and, on a new parameter node, WRITES each field's
default. The rules below are theirs, restated as data, and checked against the real annotations
of ``CPMAEDeidentify.py`` evaluated with slicer-core's real MRML classes:

- ``int``/``float``/``str``/``bool``/``pathlib.Path``: never ``None``; a Path defaults to
  ``Path()`` (shown as "." in a path field, so the panel uses ``str`` with "" instead);
- an MRML node class: may be ``None`` (its default);
- a ``Union``: every member needs a serializer and the default (``None`` for nodes) must be
  accepted by a member: a union of node classes must list ``None`` or ``getParameterNode()``
  raises "Unable to write value 'None'" and the panel never binds;
- ``Annotated[T, Choice(...)]`` etc.: the declared default must pass the validators.
"""
from __future__ import annotations

import ast
import pathlib
import typing
from dataclasses import dataclass
from typing import Annotated, Optional, Union

import pytest
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[2] / "CPMAEDeidentify"

slicer = pytest.importorskip("slicer", reason="slicer-core provides the MRML classes")
WIDGET = MODULE_DIR / "CPMAEDeidentify.py"
PATH_TYPES = (pathlib.Path, pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePath, pathlib.PurePosixPath,
              pathlib.PureWindowsPath)
NO_DEFAULT = object()

from CPMAEDeidentifyLib.training import DEFAULT_GRID_CHOICE, GRID_CHOICES  # noqa: E402  (after the importorskip)


# stand-ins for slicer.parameterNodeWrapper's validators (same names and meaning)
@dataclass
class Choice:
    choices: list


@dataclass
class Minimum:
    minimum: float


@dataclass
class Maximum:
    maximum: float


@dataclass
class WithinRange:
    minimum: float
    maximum: float


def declared_fields(source: str):
    """[(name, annotation object, default or NO_DEFAULT)] of the @parameterNodeWrapper class."""
    tree = ast.parse(source)
    classes = [c for c in tree.body if isinstance(c, ast.ClassDef)
               and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in c.decorator_list)]
    assert len(classes) == 1, "exactly one @parameterNodeWrapper class"
    namespace = {"Annotated": Annotated, "Optional": Optional, "Union": Union, "pathlib": pathlib,
                 "Choice": Choice, "Minimum": Minimum, "Maximum": Maximum, "WithinRange": WithinRange,
                 "GRID_CHOICES": GRID_CHOICES, "DEFAULT_GRID_CHOICE": DEFAULT_GRID_CHOICE,  # from the Lib
                 **{name: getattr(slicer, name) for name in dir(slicer) if name.startswith("vtkMRML")}}
    fields = []
    for stmt in classes[0].body:
        if isinstance(stmt, ast.AnnAssign):
            annotation = eval(compile(ast.Expression(stmt.annotation), str(WIDGET), "eval"), namespace)
            default = (NO_DEFAULT if stmt.value is None
                       else eval(compile(ast.Expression(stmt.value), str(WIDGET), "eval"), namespace))
            fields.append((stmt.target.id, annotation, default))
    return fields


def _split(annotation):
    if typing.get_origin(annotation) is Annotated:
        args = typing.get_args(annotation)
        return args[0], list(args[1:])
    return annotation, []


def _is_node(t) -> bool:
    return isinstance(t, type) and issubclass(t, slicer.vtkMRMLNode)


def serializer_default(t):
    """What Slicer's serializer for ``t`` writes on a new parameter node; raises if none fits."""
    t, _ = _split(t)
    if t in (int, float):
        return 0
    if t is str:
        return ""
    if t is bool:
        return False
    if t in PATH_TYPES:
        return t()
    if t is type(None):
        return None
    if _is_node(t):
        return None
    if typing.get_origin(t) is Union:
        args = typing.get_args(t)
        for arg in args:
            serializer_default(arg)  # every member needs a serializer
        if len(args) == 2 and args[1] is type(None):
            return None
        return serializer_default(args[0])
    raise TypeError(f"no serializer for {t!r}")


def accepts(t, value) -> bool:
    """Whether the serializer (with its default validators) accepts writing ``value``."""
    t, annotations = _split(t)
    if typing.get_origin(t) is Union:
        # UnionSerializer asks each member's canSerialize(type(value)): a node member does not
        # take NoneType, only a NoneSerializer (None listed in the Union) does
        ok = any((value is not None and isinstance(value, arg)) if _is_node(arg) else accepts(arg, value)
                 for arg in typing.get_args(t))
    elif t is type(None):
        ok = value is None
    elif _is_node(t):
        ok = value is None or isinstance(value, t)
    elif t is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif t in (int, str, bool) or t in PATH_TYPES:
        ok = value is not None and isinstance(value, t) and not (t is int and isinstance(value, bool))
    else:
        ok = False
    for a in annotations:
        if isinstance(a, Choice):
            ok = ok and value in a.choices
        elif isinstance(a, Minimum):
            ok = ok and value >= a.minimum
        elif isinstance(a, Maximum):
            ok = ok and value <= a.maximum
        elif isinstance(a, WithinRange):
            ok = ok and a.minimum <= value <= a.maximum
    return ok


def problems(source: str):
    found = []
    for name, annotation, default in declared_fields(source):
        try:
            value = serializer_default(annotation) if default is NO_DEFAULT else default
        except TypeError as exc:
            found.append(f"{name}: {exc}")
            continue
        if not accepts(annotation, value):
            found.append(f"{name}: Unable to write value {value!r} (the default) for {annotation}")
        if _split(annotation)[0] in PATH_TYPES:
            found.append(f"{name}: a pathlib.Path defaults to Path() and shows '.' in an empty path field")
    return found


def test_every_field_of_the_panel_can_write_its_default():
    assert problems(WIDGET.read_text(encoding="utf-8")) == []


def test_node_fields_admit_none_and_folders_start_empty():
    fields = {name: (annotation, default) for name, annotation, default in declared_fields(
        WIDGET.read_text(encoding="utf-8"))}
    assert accepts(fields["brainMask"][0], None)
    assert accepts(fields["brainMask"][0], slicer.vtkMRMLSegmentationNode())
    assert accepts(fields["brainMask"][0], slicer.vtkMRMLLabelMapVolumeNode())
    for folder in ("localWeights", "qaFolder", "trainDataFolder", "trainOutputFolder"):
        assert fields[folder] == (str, ""), folder


@pytest.mark.parametrize("declaration, expected", [
    ("brainMask: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode]", "Unable to write value None"),
    ("folder: pathlib.Path", "shows '.'"),
    ("device: Annotated[str, Choice(['cpu', 'cuda'])] = 'auto'", "Unable to write value 'auto'"),
    ("steps: Annotated[int, WithinRange(1, 64)]", "Unable to write value 0"),
    ("name: Optional[str]", ""),
])
def test_the_check_finds_the_declarations_slicer_refuses(declaration, expected):
    source = f"@parameterNodeWrapper\nclass P:\n    {declaration}\n"
    found = problems(source)
    if expected:
        assert found and expected in found[0], found
    else:
        assert found == []
