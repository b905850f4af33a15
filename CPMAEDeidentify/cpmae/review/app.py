"""`cpmae review OUT_DIR`: the review page (trame + trame-slicer: a real MRML scene, offscreen VTK).

A data manager on a server with no display opens this page through an SSH tunnel and walks the
cases of a batch: the table (status, self-check, decision) on the left, the selected case on the
right: its self-check numbers, before/after 3D skin views whose cameras are linked (turn one, the
other follows), before/after sagittal slices at the same position, and Approve / Reject with a
reason (``cases.record_decision``). Keys: j / ArrowDown next case, k / ArrowUp previous one.

The 3D views show the skin surface the self-check looks at (``cpmae.render.skin_surface``, the
input's skin threshold for both), as MRML model nodes: surface rendering stays interactive on a
CPU-only server (Mesa llvmpipe through EGL, ``cpmae.render.headless_backend``). When the recorded
input is gone, the page says so and shows the output only.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from cpmae.review import cases as C

VIEW_TAGS = {"before3d": "Before3D", "after3d": "After3D", "beforeslice": "BeforeSlice", "afterslice": "AfterSlice"}
KEYS_NEXT = ("j", "ArrowDown")
KEYS_PREVIOUS = ("k", "ArrowUp")

# global key handler: next/previous case unless the reviewer is typing a reason
_KEY_SCRIPT = """
window.addEventListener('keydown', (e) => {
  const t = e.target && e.target.tagName;
  if (t === 'INPUT' || t === 'TEXTAREA' || e.ctrlKey || e.metaKey || e.altKey) return;
  if (%s.includes(e.key) || %s.includes(e.key)) {
    e.preventDefault();
    window.trame.trigger('review_key', [e.key]);
  }
});
""" % (list(KEYS_NEXT), list(KEYS_PREVIOUS))

_CSS = """
.cpmae-table { border-collapse: collapse; width: 100%; font-size: 13px; }
.cpmae-table th, .cpmae-table td { padding: 3px 6px; border-bottom: 1px solid #ddd; text-align: left; }
.cpmae-table tr.case-row { cursor: pointer; }
.cpmae-table tr.case-row.selected { background: #cfe3ff; }
.cpmae-flag { color: #b00020; font-weight: 600; }
.cpmae-pass { color: #1b7f2a; }
"""


def _use_headless_backend() -> None:
    """Pick EGL/OSMesa before the first VTK window exists (no display on a server)."""
    from cpmae.render import headless_backend

    backend = headless_backend()
    if backend:
        os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = backend


class ReviewPage:
    """The page's state, its MRML scene and its UI over one batch output folder."""

    def __init__(self, out_dir, server=None):
        _use_headless_backend()
        from trame.app import get_server
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories
        from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

        self.out_dir = Path(out_dir).resolve()
        self.cases: List[C.Case] = C.load_cases(self.out_dir)
        self.server = server or get_server("cpmae-review", client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.slicer = SlicerApp()
        register_rca_factories(self.slicer.view_manager, self.server, rca_encoder="jpeg")
        self.layout_manager = LayoutManager(self.slicer.scene, self.slicer.view_manager, self.server)
        t = VIEW_TAGS
        defs = {
            "before3d": ViewLayoutDefinition.threed_view(name=t["before3d"], label="before"),
            "after3d": ViewLayoutDefinition.threed_view(name=t["after3d"], label="after"),
            "beforeslice": ViewLayoutDefinition.slice_view("Sagittal", label=t["beforeslice"], color="#EFD64D"),
            "afterslice": ViewLayoutDefinition.slice_view("Sagittal", label=t["afterslice"], color="#EFD64D"),
        }
        self.layout_manager.register_layout("review", Layout(LayoutDirection.Vertical, [
            Layout(LayoutDirection.Horizontal, [defs["before3d"], defs["after3d"]]),
            Layout(LayoutDirection.Horizontal, [defs["beforeslice"], defs["afterslice"]]),
        ]))
        self.layout_manager.set_layout("review")
        self._nodes: list = []
        self._observers: list = []
        self._syncing = False

        state = self.server.state
        state.rows = [c.row() for c in self.cases]
        state.counts = C.counts(self.cases)
        state.flagged_only = False
        state.selected = ""
        state.case_info = {}
        state.reason = ""
        state.message = ""
        state.out_dir = self.out_dir.name  # the folder's name: full paths stay off screenshots
        self.server.controller.trigger("review_key")(self.on_key)
        self.server.controller.trigger("review_decide")(self.decide)
        state.change("selected")(self._on_selected)
        self._build_ui()
        if self.cases:
            state.selected = self.cases[0].case
            self._on_selected(state.selected)

    # ------------------------------------------------------------------ navigation and decisions
    def visible(self) -> List[C.Case]:
        """The cases the table shows (all, or those needing a look when 'flagged only' is on)."""
        if self.server.state.flagged_only:
            return [c for c in self.cases if c.needs_look()]
        return list(self.cases)

    def step(self, delta: int) -> None:
        shown = self.visible()
        if not shown:
            return
        ids = [c.case for c in shown]
        cur = self.server.state.selected
        i = ids.index(cur) + delta if cur in ids else 0
        self.server.state.selected = ids[max(0, min(len(ids) - 1, i))]

    def on_key(self, key: str) -> None:
        if key in KEYS_NEXT:
            self.step(1)
        elif key in KEYS_PREVIOUS:
            self.step(-1)

    def decide(self, decision: str) -> None:
        state = self.server.state
        case_id = state.selected
        try:
            C.record_decision(self.out_dir, case_id, decision, state.reason)
        except Exception as exc:  # shown on the page; the files are unchanged
            state.message = f"not recorded: {exc}"
            return
        self.cases = C.load_cases(self.out_dir)
        state.rows = [c.row() for c in self.cases]
        state.counts = C.counts(self.cases)
        state.message = f"{decision} recorded for {case_id}"
        state.case_info = dict(state.case_info, decision=decision)

    # ------------------------------------------------------------------ the selected case
    def _case(self, case_id: str) -> Optional[C.Case]:
        return next((c for c in self.cases if c.case == case_id), None)

    def _on_selected(self, selected=None, **_):
        case = self._case(selected or "")
        state = self.server.state
        if case is None:
            return
        state.reason = case.reason
        state.message = ""
        info: Dict[str, Any] = {"case": case.case, "status": case.status, "error": case.error or "",
                                "check": case.check_state, "checks": case.row()["checks"],
                                "decision": case.decision or "", "notes": list(case.problems)}
        try:
            self._show(case, info)
        except Exception as exc:  # a file that cannot be shown must not stop the page
            info["notes"].append(f"cannot display this case: {exc}")
        state.case_info = info

    def _clear(self) -> None:
        for obj, tag in self._observers:
            obj.RemoveObserver(tag)
        self._observers = []
        for node in self._nodes:
            if node.GetScene() is not None:
                self.slicer.scene.RemoveNode(node)
        self._nodes = []

    def _show(self, case: C.Case, info: Dict[str, Any]) -> None:
        from cpmae.io import read_image
        from cpmae.render import skin_threshold

        self._clear()
        if case.status != "ok" or not case.output:
            info["notes"].append("no output to show (the case did not finish)")
            return
        out_path = C.output_path(self.out_dir, case)  # refuses paths outside OUT_DIR
        if not out_path.is_file():
            info["notes"].append(f"the output file is missing: {case.output}")
            return
        in_path = C.input_path(case)
        if in_path is None:
            info["notes"].append(f"the recorded input is no longer there ({case.input or 'not recorded'}): "
                                 "showing the output only")
        after_img = read_image(out_path)
        before_img = read_image(in_path) if in_path is not None else None
        iso = skin_threshold(before_img if before_img is not None else after_img)
        vm = self.slicer.view_manager
        pairs = [("after", out_path, after_img, VIEW_TAGS["after3d"], VIEW_TAGS["afterslice"])]
        if before_img is not None:
            pairs.insert(0, ("before", in_path, before_img, VIEW_TAGS["before3d"], VIEW_TAGS["beforeslice"]))
        for label, path, img, tag3d, tagslice in pairs:
            view3d, sview = vm.get_view(tag3d), vm.get_view(tagslice)
            model = self._skin_model(img, iso, f"{label} skin")
            model.GetDisplayNode().SetViewNodeIDs([view3d.get_view_node_id()])
            volume = self.slicer.volumes_logic.AddArchetypeVolume(str(path), f"{label} volume", 0)
            if volume is None:
                raise ValueError(f"Slicer could not read {path}")
            self._nodes.append(volume)
            sview.set_background_volume_id(volume.GetID())
            sview.fit_view_to_content()
            view3d.fit_view_to_content()
        info["before_shown"] = before_img is not None
        self._link_views()
        for tag in VIEW_TAGS.values():
            vm.get_view(tag).schedule_render()

    def _skin_model(self, img, iso: float, name: str):
        """An MRML model of the skin surface (LPS from cpmae.render, turned to Slicer's RAS)."""
        from vtkmodules.vtkCommonTransforms import vtkTransform
        from vtkmodules.vtkFiltersGeneral import vtkTransformPolyDataFilter

        from cpmae.render import SKIN_RGB, skin_surface

        lps_to_ras = vtkTransform()
        lps_to_ras.Scale(-1.0, -1.0, 1.0)
        flip = vtkTransformPolyDataFilter()
        flip.SetTransform(lps_to_ras)
        flip.SetInputData(skin_surface(img, iso))
        flip.Update()
        model = self.slicer.scene.AddNewNodeByClass("vtkMRMLModelNode", name)
        model.SetAndObservePolyData(flip.GetOutput())
        model.CreateDefaultDisplayNodes()
        model.GetDisplayNode().SetColor(*SKIN_RGB)
        self._nodes.append(model)
        return model

    def _link_views(self) -> None:
        """One camera motion moves both 3D views; one slice offset moves both slices."""
        vm = self.slicer.view_manager
        cams = [vm.get_view(VIEW_TAGS[k]).renderer().GetActiveCamera() for k in ("before3d", "after3d")]
        slices = [vm.get_view(VIEW_TAGS[k])._view_node for k in ("beforeslice", "afterslice")]
        slices = [s for s in slices if s is not None]
        cams[1].DeepCopy(cams[0])

        def follow(src, dst, tag):
            def cb(*_):
                if self._syncing:
                    return
                self._syncing = True
                try:
                    if tag.endswith("3d"):
                        dst.SetPosition(src.GetPosition())
                        dst.SetFocalPoint(src.GetFocalPoint())
                        dst.SetViewUp(src.GetViewUp())
                        dst.SetParallelScale(src.GetParallelScale())
                        dst.SetViewAngle(src.GetViewAngle())
                    else:
                        dst.SetSliceOffset(src.GetSliceOffset())
                    vm.get_view(VIEW_TAGS[tag]).schedule_render()
                finally:
                    self._syncing = False
            return cb

        for a, b, tag_b in ((0, 1, "after3d"), (1, 0, "before3d")):
            self._observers.append((cams[a], cams[a].AddObserver("ModifiedEvent", follow(cams[a], cams[b], tag_b))))
        if len(slices) == 2:
            slices[1].SetSliceOffset(slices[0].GetSliceOffset())
            for a, b, tag_b in ((0, 1, "afterslice"), (1, 0, "beforeslice")):
                self._observers.append((slices[a], slices[a].AddObserver(
                    "ModifiedEvent", follow(slices[a], slices[b], tag_b))))

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        from trame.ui.vuetify3 import SinglePageLayout
        from trame.widgets import client, html
        from trame.widgets import vuetify3 as v3

        with SinglePageLayout(self.server, full_height=True) as ui:
            self.ui = ui
            ui.title.set_text("CPMAE review")
            with ui.toolbar:
                client.Style(_CSS)
                client.Script(_KEY_SCRIPT)
                html.Span("{{ out_dir }}", classes="text-caption mx-2")
                v3.VSpacer()
                html.Span("{{ counts.cases }} cases · {{ counts.flagged }} flagged · {{ counts.failed }} failed · "
                          "{{ counts.approved }} approved · {{ counts.rejected }} rejected",
                          id="counts", classes="text-body-2 mx-2")
                v3.VSwitch(v_model=("flagged_only", False), label="flagged only", hide_details=True,
                           density="compact", classes="mx-2", id="flagged-only", style="max-width: 160px")
            with ui.content:
                with html.Div(style="display: flex; height: calc(100vh - 64px);"):
                    with html.Div(style="width: 440px; overflow: auto; border-right: 1px solid #ccc;"):
                        with html.Table(classes="cpmae-table", id="cases"):
                            with html.Tr():
                                for title in ("case", "status", "self-check", "decision"):
                                    html.Th(title)
                            with html.Tr(v_for="row in rows", key="row.case",
                                         v_show="!flagged_only || row.needs_look",
                                         classes=("['case-row', row.case === selected ? 'selected' : '']",),
                                         click="selected = row.case",
                                         raw_attrs=[':data-case="row.case"']):
                                html.Td("{{ row.case }}")
                                html.Td("{{ row.status }}")
                                html.Td("{{ row.check }}{{ row.flagged ? ': ' + row.flagged : '' }}",
                                        classes=("row.check === 'passed' ? 'cpmae-pass' : 'cpmae-flag'",))
                                html.Td("{{ row.decision }}")
                    with html.Div(style="flex: 1; display: flex; flex-direction: column; min-width: 0;"):
                        with html.Div(classes="pa-2", style="border-bottom: 1px solid #ccc;"):
                            html.Div("{{ case_info.case }} — {{ case_info.status }}"
                                     "{{ case_info.decision ? ' — ' + case_info.decision : '' }}",
                                     classes="text-subtitle-1", id="case-title")
                            with html.Div(classes="text-body-2"):
                                html.Span("{{ c.name }}: {{ c.result }} ({{ c.value === null ? '-' : c.value }}"
                                          "{{ c.limit !== undefined && c.limit !== null ? ', limit ' + c.limit : '' }})",
                                          v_for="c in (case_info.checks || [])", key="c.name",
                                          classes=("['mr-3', c.result === 'flag' ? 'cpmae-flag' : 'cpmae-pass']",))
                            html.Div("{{ n }}", v_for="n in (case_info.notes || [])", key="n",
                                     classes="text-body-2 cpmae-flag", id="case-notes")
                            html.Div("{{ case_info.error }}", v_if="case_info.error", classes="text-body-2 cpmae-flag")
                            with html.Div(style="display: flex; align-items: center; gap: 8px;", classes="mt-1"):
                                v3.VTextField(v_model=("reason", ""), label="reason", density="compact",
                                              hide_details=True, id="reason")
                                v3.VBtn("Approve", color="green", variant="flat", id="approve",
                                        disabled=("case_info.status !== 'ok'",),
                                        click="trigger('review_decide', ['approved'])")
                                v3.VBtn("Reject", color="red", variant="flat", id="reject",
                                        disabled=("case_info.status !== 'ok'",),
                                        click="trigger('review_decide', ['rejected'])")
                            html.Div("{{ message }}", v_if="message", classes="text-body-2", id="message")
                        with html.Div(style="display: flex;", classes="text-caption px-2"):
                            html.Div("before: the recorded input", style="flex: 1;",
                                     v_if="case_info.before_shown")
                            html.Div("before: input not available", style="flex: 1;", classes="cpmae-flag",
                                     v_else=True)
                            html.Div("after: the de-identified output (3D cameras and slices linked)",
                                     style="flex: 1;")
                        with html.Div(style="flex: 1; position: relative; min-height: 0;"):
                            self.layout_manager.initialize_layout_grid(ui)


def serve(out_dir, host: str = "127.0.0.1", port: int = 8080, open_browser: bool = False) -> None:
    """Build the page over ``out_dir`` and serve it until interrupted."""
    page = ReviewPage(out_dir)
    page.server.start(host=host, port=port, open_browser=open_browser, show_connection_info=False)
