"""The review page's scene without a browser: linked cameras and slices, navigation, a missing input.

Builds ``cpmae.review.app.ReviewPage`` in-process (trame server not started, offscreen VTK) over the
averaged-head test batch; the browser test (test_review_browser.py) covers the page itself.
"""
from __future__ import annotations

import numpy as np
import pytest

from review_fixtures import make_review_batch


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from trame.app import get_server

    from cpmae.review.app import ReviewPage

    root = tmp_path_factory.mktemp("review-page")
    out = make_review_batch(root)
    (root / "in" / "sub-03_T1w.nii.gz").unlink()
    return ReviewPage(out, server=get_server("cpmae-review-test", client_type="vue3"))


def _view(page, tag):
    from cpmae.review.app import VIEW_TAGS

    return page.slicer.view_manager.get_view(VIEW_TAGS[tag])


def test_first_case_shows_before_and_after(page):
    info = page.server.state.case_info
    assert info["case"] == "sub-01_T1w.nii.gz" and info["before_shown"] and not info["notes"]
    names = sorted(n.GetName() for n in page._nodes)
    assert names == ["after skin", "after volume", "before skin", "before volume"]


def test_3d_cameras_are_linked_both_ways(page):
    before = _view(page, "before3d").renderer().GetActiveCamera()
    after = _view(page, "after3d").renderer().GetActiveCamera()
    before.Azimuth(30.0)
    assert np.allclose(after.GetPosition(), before.GetPosition())
    after.Elevation(15.0)
    after.OrthogonalizeViewUp()
    assert np.allclose(before.GetPosition(), after.GetPosition())
    assert np.allclose(before.GetViewUp(), after.GetViewUp())


def test_slices_are_linked(page):
    before, after = _view(page, "beforeslice")._view_node, _view(page, "afterslice")._view_node
    before.SetSliceOffset(before.GetSliceOffset() + 7.0)
    assert after.GetSliceOffset() == pytest.approx(before.GetSliceOffset())


def test_keys_move_through_the_cases_and_the_filter(page):
    state = page.server.state
    page.on_key("j")
    assert state.selected == "sub-02_T1w.nii.gz"
    page._on_selected(state.selected)  # what the state watcher does on a live server
    page.on_key("ArrowDown")
    assert state.selected == "sub-03_T1w.nii.gz"
    page._on_selected(state.selected)
    info = state.case_info
    assert not info["before_shown"] and any("no longer there" in n for n in info["notes"])
    assert sorted(n.GetName().split("_")[0] for n in page._nodes) == ["after skin", "after volume"]
    scene = page.slicer.scene
    volumes = [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
               for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
    assert len(volumes) == 1  # the previous case's nodes were removed
    state.flagged_only = True
    page.on_key("k")
    assert state.selected == "sub-02_T1w.nii.gz"  # sub-01 passed: not in the flagged list
    page.on_key("k")
    assert state.selected == "sub-02_T1w.nii.gz"
    state.flagged_only = False
