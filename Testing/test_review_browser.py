"""End to end in a real browser: `cpmae review` on a small batch output, driven by headless Chromium.

Loads the page, checks the table and the self-check numbers, selects a case by clicking its row,
moves with the keyboard, filters to flagged cases, approves a case with a reason and reads the
decision back from the manifest and the provenance record; a case whose input was deleted says
so. ``CPMAE_REVIEW_SCREENSHOT=docs/images/review.png`` also saves the page for the docs (averaged
head only). Needs Debian's ``chromium`` (``make test`` installs it) and ~1 min on 2 cores.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cdp import Browser, find_chromium, free_port
from review_fixtures import make_review_batch

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (apt-get install chromium)")

ROW = "document.querySelector('tr.case-row[data-case=\"{case}\"]')"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    out = make_review_batch(root)
    (root / "in" / "sub-03_T1w.nii.gz").unlink()  # the input of one case is gone
    port = free_port()
    env = dict(os.environ)
    log = open(root / "server.log", "w", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "cpmae", "review", str(out), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 240
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    pytest.fail("cpmae review did not start:\n" + (root / "server.log").read_text(encoding="utf-8")[-3000:])
                time.sleep(0.5)
        yield url, out, root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _select(b: Browser, case: str) -> None:
    b.eval(ROW.format(case=case) + ".click()")
    b.wait_for(f"document.querySelector('#case-title').innerText.startsWith({json.dumps(case)})", 60, f"{case} shown")


def test_review_page_select_navigate_filter_approve(served):
    url, out, root = served
    with Browser() as b:
        b.open(url)
        b.wait_for("document.querySelectorAll('tr.case-row').length === 3", 120, "the table of 3 cases")
        assert "2 flagged" in b.eval("document.querySelector('#counts').innerText")
        row2 = b.eval(ROW.format(case="sub-02_T1w.nii.gz") + ".innerText")
        assert "identity" in row2 and "changed" in row2

        _select(b, "sub-02_T1w.nii.gz")
        title = b.eval("document.querySelector('#case-title').parentElement.innerText")
        assert "identity: flag" in title and "changed: flag" in title

        b.eval("document.activeElement && document.activeElement.blur()")
        b.key("j")  # next case
        b.wait_for("document.querySelector('#case-title').innerText.startsWith('sub-03')", 60, "j -> sub-03")
        b.wait_for("document.body.innerText.includes('no longer there')", 60, "the missing-input note")
        b.key("k")  # previous case
        b.wait_for("document.querySelector('#case-title').innerText.startsWith('sub-02')", 60, "k -> sub-02")

        b.eval("document.querySelector('#flagged-only').click()")
        b.wait_for("[...document.querySelectorAll('tr.case-row')].filter(r => r.offsetParent !== null).length === 2",
                   30, "flagged-only filter")
        b.eval("document.querySelector('#flagged-only').click()")
        b.wait_for("[...document.querySelectorAll('tr.case-row')].filter(r => r.offsetParent !== null).length === 3",
                   30, "filter off")

        _select(b, "sub-01_T1w.nii.gz")
        b.eval("""(() => { const i = document.querySelector('#reason');
                   i.value = 'new face, brain seam invisible'; i.dispatchEvent(new Event('input')); })()""")
        time.sleep(1.0)  # the reason reaches the server state
        b.eval("document.querySelector('#approve').click()")
        b.wait_for("(document.querySelector('#message') || {}).innerText === 'approved recorded for sub-01_T1w.nii.gz'",
                   60, "the decision message")
        b.wait_for(ROW.format(case="sub-01_T1w.nii.gz") + ".innerText.includes('approved')", 30, "decision in table")
        shot = os.environ.get("CPMAE_REVIEW_SCREENSHOT")
        if shot:
            time.sleep(5)  # let the views stream their last frames
            b.screenshot(shot)

    events = [json.loads(line) for line in (out / "logs" / "manifest.jsonl").read_text(encoding="utf-8").splitlines() if line]
    reviews = [e for e in events if e["status"] == "reviewed"]
    assert reviews == [{"case": "sub-01_T1w.nii.gz", "status": "reviewed", "decision": "approved",
                        "reason": "new face, brain seam invisible", "time": reviews[0]["time"]}]
    prov = json.loads((out / "sub-01_T1w.nii.gz.provenance.json").read_text(encoding="utf-8"))
    assert prov["review"]["decision"] == "approved" and prov["review"]["reason"] == "new face, brain seam invisible"
