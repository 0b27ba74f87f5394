"""report.html is self-contained and renders in a real browser (headless Chromium)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np

from incident_helpers import MODEL, alert, context
from servers import binary

from virk_exporter.incidents.bundle import build_bundle, read_bundle
from virk_exporter.incidents.report import ONSET_COLOUR, THUMB_WIDTH

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
    assert "<script" not in page and "<link" not in page and not re.search(r'(src|href)="(?!data:)[^"]*//', page.replace('href="http://prometheus', ""))

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
        "reference frame": 6, "frame before the alert": 6, "frame after the alert": 6, "drift timeline": 1, "image properties": 1,
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
            "probabilities": {"blur": 0.91, "weather": 0.06, "contrast": 0.02, "noise": 0.01},
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
    assert "naming model: blur 91%, weather 6%, contrast 2%</p>" in page  # the three most likely causes


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [binary("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=90,
    )


def test_report_screenshot_shows_the_onset_and_charts_the_evidence(tmp_path):
    """What an on-call engineer sees first, in a real browser: the property chart at the top, its
    properties the evidence table's first rows, the onset marked (a magenta vertical line that
    only the onset marker draws), thumbnails captioned with frame id and time."""
    b = read_bundle(build_bundle(alert(), MODEL, context(n_frames=16))[0])
    page = b.files["report.html"].decode()
    charted = re.search(r'class="charted" data-properties="([^"]*)"', page).group(1).split(",")
    evidence = re.findall(r"<table class='evidence'>.*?</table>", page, re.S)[0]
    first_rows = list(dict.fromkeys(re.findall(r"<tr><td>([^<]+)</td>", evidence)))
    assert charted and charted == first_rows[: len(charted)], (charted, first_rows)
    assert b.manifest["diagnosis"]["cam1"]["evidence"][0]["property"] == charted[0]
    assert re.search(r"<figcaption>cam1 · frame \d+ · \d\d:\d\d:\d\d\.\d \([+-]\d+\.\d s\)</figcaption>", page)
    assert "Onset (first detection):" in page and '"endsAt": "0001-01-01T00:00:00Z"' in b.files["manifest.json"].decode()

    path = tmp_path / "report.html"
    path.write_text(page)
    shot = tmp_path / "report.png"
    run = _chromium("--window-size=1200,1400", f"--screenshot={shot}", path.as_uri(), profile=tmp_path / "profile")
    assert shot.exists(), run.stderr[-2000:]
    image = cv2.cvtColor(cv2.imread(str(shot)), cv2.COLOR_BGR2RGB)
    onset = np.array([int(ONSET_COLOUR[i : i + 2], 16) for i in (1, 3, 5)])
    mask = (np.abs(image.astype(int) - onset).max(axis=2) <= 12)
    # The onset line: one column with a long run of the marker colour in each of the charts'
    # subplots (the summary box's border is the same colour: it is a short, wide block at the left).
    columns = [x for x in range(40, image.shape[1]) if mask[:, x].sum() >= 60]
    assert columns, "no onset marker in the screenshot"
    runs = mask[:, columns[0]]
    assert runs.sum() >= 60 * len(charted) * 0.8
    # The charts come first: the marker is in the upper part of the page, above the thumbnails.
    assert np.nonzero(runs)[0].min() < image.shape[0] * 0.6
    shutil.copy(shot, tmp_path / "kept.png")
