"""Static checks of what only a real Slicer build would otherwise catch: the .ui, CMake, the index .json.

The panel itself needs Qt (desktop Slicer only, see the self-test); these tests make sure the
pieces it is assembled from agree with each other.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "Testing" / "panel"))
from panel_harness import SLICER_DESIGNER_PLUGINS  # noqa: E402  (the fixed list the panel test uses)

MODULE = REPO / "CPMAEDeidentify"
UI = MODULE / "Resources" / "UI" / "CPMAEDeidentify.ui"
WIDGET = MODULE / "CPMAEDeidentify.py"

QT_WIDGETS = {"QWidget", "QLabel", "QPushButton", "QComboBox", "QSpinBox", "QDoubleSpinBox", "QCheckBox",
              "QRadioButton", "QProgressBar", "QPlainTextEdit", "QTextEdit", "QLineEdit", "QListWidget",
              "QGroupBox", "QFrame", "QTabWidget", "QSlider", "QToolButton", "QSplitter", "QScrollArea",
              "QTableWidget"}
# widget class -> parameter types its parameterNodeWrapper connector accepts (Slicer's guiConnectors.py)
CONNECTORS = {
    "QSpinBox": {"int"}, "QSlider": {"int"}, "QDoubleSpinBox": {"float"}, "ctkSliderWidget": {"float"},
    "QCheckBox": {"bool"}, "QLineEdit": {"str"},
    # pathlib.Path: Slicer's own connector; str: the module's (CPMAEDeidentify.registerPathConnector)
    "ctkPathLineEdit": {"pathlib.Path", "str"},
    "QComboBox": {"choice"}, "qMRMLNodeComboBox": {"node"},
}


def ui_widgets():
    """(class, name, SlicerParameterName or None) for every widget in the .ui."""
    out = []
    for widget in ET.parse(UI).getroot().iter("widget"):
        param = None
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                param = prop.find("string").text
        out.append((widget.get("class"), widget.get("name"), param))
    return out


def parameter_fields():
    """Field name -> kind ('int', 'choice', 'node', 'pathlib.Path', ...) of the parameterNodeWrapper dataclass."""
    tree = ast.parse(WIDGET.read_text(encoding="utf-8"))
    classes = [c for c in tree.body if isinstance(c, ast.ClassDef)
               and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in c.decorator_list)]
    assert len(classes) == 1, "exactly one @parameterNodeWrapper class in the Widget file"
    fields = {}
    for stmt in classes[0].body:
        if isinstance(stmt, ast.AnnAssign):
            text = ast.unparse(stmt.annotation)
            if "Choice(" in text:
                kind = "choice"
            elif "vtkMRML" in text:
                kind = "node"
            else:
                kind = re.sub(r"^Annotated\[(\w+(?:\.\w+)?),.*", r"\1", text)
            fields[stmt.target.id] = kind
    return fields


def test_every_parameter_widget_maps_to_a_field_with_a_matching_connector():
    fields = parameter_fields()
    bound = [(cls, name, param) for cls, name, param in ui_widgets() if param]
    assert len(bound) >= 10
    for cls, name, param in bound:
        assert param in fields, f"{name}: SlicerParameterName {param!r} is not a parameter node field"
        assert fields[param] in CONNECTORS.get(cls, set()), \
            f"{name}: a {cls} cannot show a {fields[param]} parameter ({param})"
    names = [param for _, _, param in bound]
    assert len(names) == len(set(names)), "two widgets bound to one parameter"


def test_ui_uses_only_qt_ctk_and_slicer_widget_classes():
    for cls, name, _ in ui_widgets():
        # not any "qMRML..." name: only classes Slicer ships a designer plugin for (qMRMLPlotView has none)
        assert cls in QT_WIDGETS or cls in SLICER_DESIGNER_PLUGINS, f"{name}: unknown class {cls}"
    declared = {c.find("class").text for c in ET.parse(UI).getroot().iter("customwidget")}
    custom = {cls for cls, _, _ in ui_widgets() if not cls.startswith("Q")}
    assert custom <= declared, f"custom widgets not declared: {custom - declared}"


def test_widget_code_uses_only_widgets_that_exist_in_the_ui():
    names = {name for _, name, _ in ui_widgets()}
    used = set(re.findall(r"self\.ui\.(\w+)", WIDGET.read_text(encoding="utf-8"))) | set(re.findall(r"widget\.ui\.(\w+)", WIDGET.read_text(encoding="utf-8")))
    assert used, "the widget code should use the .ui"
    assert used <= names, f"widgets used in code but missing from the .ui: {sorted(used - names)}"


def test_widget_file_is_valid_python_and_imports_only_existing_logic_names():
    tree = ast.parse(WIDGET.read_text(encoding="utf-8"))
    import importlib

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("CPMAEDeidentifyLib"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):  # a submodule: `from CPMAEDeidentifyLib import jobs`
                    importlib.import_module(f"{node.module}.{alias.name}")
    # never imports torch or the engine's heavy modules at import time (Slicer must start fast, offline)
    top_imports = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top_imports |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert not top_imports & {"torch", "deepbet", "cpmae", "SimpleITK", "numpy"}


def test_logic_package_never_imports_qt():
    for path in (MODULE / "CPMAEDeidentifyLib").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] not in {"qt", "ctk", "PythonQt"}, f"{path.name} imports {name}"
                assert "parameterNodeWrapper" not in name, f"{path.name} imports {name}"
        # slicer.app exists only in the desktop application: allowed only in SlicerContext.fromSlicer
        for function in [tree] + [f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)]:
            if getattr(function, "name", "") == "fromSlicer":
                continue
            body = function.body if isinstance(function, ast.Module) else [function]
            if isinstance(function, ast.Module):
                body = [n for n in body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))]
            for stmt in body:
                for node in ast.walk(stmt):
                    if isinstance(node, ast.Attribute) and node.attr == "app" and \
                            getattr(node.value, "id", None) == "slicer":
                        assert False, f"{path.name}:{node.lineno} uses slicer.app outside fromSlicer"


def cmake_list(text: str, variable: str):
    match = re.search(r"set\(" + variable + r"\s+(.*?)\)", text, re.S)
    assert match, f"{variable} not set"
    return [w.replace("${MODULE_NAME}", "CPMAEDeidentify") for w in match.group(1).split()]


def test_module_cmakelists_lists_every_script_and_resource():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = set(cmake_list(text, "MODULE_PYTHON_SCRIPTS"))
    resources = set(cmake_list(text, "MODULE_PYTHON_RESOURCES"))
    on_disk_scripts = {"CPMAEDeidentify.py"} | {str(p.relative_to(MODULE)) for p in (MODULE / "CPMAEDeidentifyLib").glob("*.py")}
    assert scripts == on_disk_scripts
    on_disk_resources = {str(p.relative_to(MODULE)) for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    assert resources == on_disk_resources
    for listed in scripts | resources:
        assert (MODULE / listed).is_file(), listed
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text  # the self-test is registered


def test_engine_files_in_git_are_covered_by_the_cmake_globs():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    patterns = re.findall(r"(cpmae/[^\s)]+)", text)
    tracked = subprocess.run(["git", "ls-files", "CPMAEDeidentify/cpmae"], cwd=REPO, capture_output=True,
                             text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    from fnmatch import fnmatch

    for path in tracked:
        relative = path[len("CPMAEDeidentify/"):]
        assert any(fnmatch(relative, p) for p in patterns), f"{relative} would not be installed by CMake"


def test_extensions_index_json_agrees_with_the_cmake_extension_variables():
    """The Extensions Index takes one <name>.json per extension (catalog item schema 1.0.0); the
    rest of the description (homepage, icon, screenshots, text) comes from CMakeLists.txt."""
    import json

    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"^project\(CPMAE\)", cmake, re.M)
    variables = dict(re.findall(r'set\(EXTENSION_(\w+) "?(.*?)"?\)\s*$', cmake, re.M))
    entry = json.loads((REPO / "CPMAE.json").read_text(encoding="utf-8"))
    assert entry["$schema"].endswith("slicer-extension-catalog-item-schema-v1.0.0.json#")
    assert set(entry) == {"$schema", "build_dependencies", "build_subdirectory", "category", "scmrevision", "scmurl"}
    assert entry["category"] == variables["CATEGORY"] in ("Neuroimaging", "Image Synthesis")
    assert entry["build_dependencies"] == variables["DEPENDS"].split() == ["PyTorch"]
    assert entry["build_subdirectory"] == variables["BUILD_SUBDIRECTORY"]
    assert entry["scmurl"].endswith(".git") and variables["HOMEPAGE"].startswith(entry["scmurl"][:-4])
    assert not list(REPO.glob("*.s4ext")), "the index no longer reads .s4ext files: one description only"
    # pictures the URLs point to exist in the repository (path after the branch name)
    for url in [variables["ICONURL"], *variables["SCREENSHOTURLS"].split()]:
        local = REPO / url.split("/main/", 1)[1]
        assert local.is_file(), url


def test_license_is_the_full_apache_2_text():
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10000


def test_logic_never_opens_a_render_window_inside_slicer():
    """Face pictures come from `cpmae render` out of process; Slicer's own 3D views draw the rest.
    A render window (EGL/OSMesa) made inside Slicer's process fights its OpenGL context."""
    for path in (MODULE / "CPMAEDeidentifyLib").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        for banned in ("RenderWindow", "VTK_DEFAULT_OPENGL_WINDOW", "SetOffScreenRendering", "cpmae.render import _"):
            assert banned not in text, f"{path.name} uses {banned}"


def test_engine_error_paths_are_stripped_whatever_the_separator(monkeypatch, tmp_path):
    """Windows prints C:\\...\\cpmae-job-x\\mask.nii: the node's name, not a temp path, reaches the user."""
    import os

    from CPMAEDeidentifyLib import logic

    class Node:
        def GetName(self):
            return "MRHead"

    class Runner:
        def errorMessage(self):
            return f"{work}\\input.nii: not a head; {work}\\mask.nii: empty"

    work = tmp_path / "cpmae-job-x"
    monkeypatch.setattr(os, "sep", "\\")
    job = logic.EngineJob(None, Node(), work)
    job.runner = Runner()
    monkeypatch.setattr(logic.Path, "__truediv__", lambda self, other: type(self)(f"{self}\\{other}"))
    assert job.errorMessage() == "MRHead: not a head; mask.nii: empty"
