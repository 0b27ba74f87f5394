"""report.html is self-contained and renders in a real browser (headless Chromium)."""

from __future__ import annotations

import html
import json
import re
import subprocess

from incident_helpers import MODEL, alert, context
from servers import binary

from virk_exporter.incidents.bundle import build_bundle, read_bundle
from virk_exporter.incidents.report import THUMB_WIDTH

# Test-side probe: once the page has loaded, record every image's decode result in the DOM.
PROBE = """<script>window.addEventListener("load", () => {
  const r = Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);
  document.body.setAttribute("data-images", JSON.stringify(r));
});</script>"""


def test_report_is_self_contained_and_renders_in_chromium(tmp_path):
    b = read_bundle(build_bundle(alert(), MODEL, context(n_frames=16))[0])
    page = b.files["report.html"].decode()
    # self-contained: every image inline, nothing fetched, no scripts of its own
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in sources)
    assert "<script" not in page and "<link" not in page and "http://" not in page and "https://" not in page

    path = tmp_path / "report.html"
    path.write_text(page.replace("</body>", PROBE + "</body>"))
    profile = tmp_path / "profile"
    run = subprocess.run(
        [
            binary("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
            "--virtual-time-budget=5000", "--dump-dom", path.as_uri(),
        ],
        capture_output=True, text=True, timeout=60,
    )
    match = re.search(r'data-images="([^"]*)"', run.stdout)
    assert match, f"page did not load in Chromium (rc {run.returncode}): {run.stderr[-2000:]}"
    images = json.loads(html.unescape(match.group(1)))
    by_kind: dict[str, list] = {}
    for alt, complete, width, height in images:
        assert complete and width > 0 and height > 0, f"{alt} did not render"
        by_kind.setdefault(alt, []).append((width, height))
    # 6 of the 9 reference samples, 6 thumbnails before and 6 after the onset, and both plots
    assert {k: len(v) for k, v in by_kind.items()} == {
        "reference frame": 6, "frame before the alert": 6, "frame after the alert": 6, "drift timeline": 1, "property shifts": 1,
    }
    assert by_kind["drift timeline"][0][0] >= 600 and by_kind["frame before the alert"][0] == (THUMB_WIDTH, THUMB_WIDTH * 3 // 4)
    assert b.manifest["cause"] in run.stdout and MODEL in run.stdout


def test_diagnosis_is_rendered_as_a_readable_evidence_table():
    from virk_exporter.incidents.report import diagnosis_html

    diagnosis = {
        "cam-1": {
            "top": "blur",
            "subkind": "defocus",
            "causes": [["blur", 3.8], ["contrast", 1.2], ["noise", 0.0]],
            "evidence": [
                {"property": "sharpness", "reference": 2.28, "current": 1.44, "effect": -9.5, "q_value": 6.3e-9, "cause": "blur", "subkind": "defocus"},
            ],
            "notes": ["frame size 320x240 differs from the reference's 640x480"],
            "slices": {"slices": [{"slice": "shift=night", "score": 7.5, "q_value": 0.001, "support": 40, "significant": True}]},
        }
    }
    page = diagnosis_html(diagnosis)
    assert "cam-1: blur (defocus)" in page
    assert "<td>sharpness</td><td>2.28</td><td>1.44</td><td>-9.5</td><td>6.3e-09</td>" in page
    assert "blur 3.80, contrast 1.20" in page and "noise" not in page.split("cause scores:")[1].split("</p>")[0]
    assert "differs from the reference" in page and "shift=night" in page
