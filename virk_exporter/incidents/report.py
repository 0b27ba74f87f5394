"""report.html: one self-contained page (no network, no scripts) an on-call engineer opens first.

Thumbnails before/after the alert, the drift timeline and the image-property shifts are
embedded as base64 images so the file works from a zip, an e-mail or an air-gapped laptop.
Plots use matplotlib's object API (no pyplot state), so concurrent builds do not interfere,
and PNG metadata is stripped so the same content gives the same bytes.
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any, Sequence

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from virk_exporter.drift.ks import robust_spread

THUMB_WIDTH = 240  # large enough that a defocus or a shift shows
THUMBS_PER_SIDE = 6


def _png(figure: Figure) -> str:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode()


def _few_ticks(*axes) -> None:
    """Tick objects (a text each) are most of matplotlib's drawing time: keep five or so."""
    for axis in axes:
        axis.set_major_locator(MaxNLocator(5))


def _thumbnail(rgb: np.ndarray) -> str:
    height = max(1, round(rgb.shape[0] * THUMB_WIDTH / rgb.shape[1]))
    small = cv2.resize(rgb, (THUMB_WIDTH, height), interpolation=cv2.INTER_AREA)
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise ValueError("thumbnail could not be encoded")
    return base64.b64encode(buffer.tobytes()).decode()


def _pick(items: Sequence[Any], n: int) -> list[Any]:
    """n evenly spaced items (the whole sequence when it is short)."""
    if len(items) <= n:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n).round()]


def timeline_plot(timeline: list[dict]) -> str | None:
    """p-value per source against the threshold, detections marked; None without data."""
    points = [p for p in timeline if p.get("p_value") is not None or p.get("statistic") is not None]
    if not points:
        return None
    figure = Figure(figsize=(8, 3))
    axes = figure.add_subplot()
    t0 = min(float(p["timestamp"]) for p in points)
    for source in sorted({str(p.get("source", "")) for p in points}):
        series = sorted((p for p in points if str(p.get("source", "")) == source), key=lambda p: p["timestamp"])
        key = "p_value" if all(p.get("p_value") is not None for p in series) else "statistic"
        xs = [float(p["timestamp"]) - t0 for p in series]
        axes.plot(xs, [float(p[key]) for p in series], marker="o", markersize=3, label=f"{source} {key}")
        hits = [(x, float(p[key])) for x, p in zip(xs, series) if p.get("detected")]
        if hits:
            axes.scatter(*zip(*hits), color="red", zorder=3, s=18)
    thresholds = [p for p in points if p.get("threshold") is not None and p.get("p_value") is not None]
    if thresholds:
        axes.axhline(float(thresholds[-1]["threshold"]), color="grey", linestyle="--", label="threshold")
    _few_ticks(axes.xaxis, axes.yaxis)
    axes.set_xlabel("seconds since first test")
    axes.set_title("drift timeline (red: drift detected)")
    axes.legend(fontsize=7, loc="upper right")  # "best" searches placements: slow
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.17, top=0.9)  # fixed: tight_layout renders twice
    return _png(figure)


MAX_PROPERTIES = 10  # the fingerprinter measures ~25; the most shifted say what happened


def property_plot(before: list[dict[str, float]], after: list[dict[str, float]]) -> str | None:
    """How far each image property's median moved after the alert, in units of its robust
    spread before the alert (the ``MAX_PROPERTIES`` largest shifts; text layout is most of the
    plotting cost). A relative change would make properties that sit near zero (rotation,
    shift) look enormous and hide the ones that matter."""
    all_names = sorted({k for props in before + after for k in props})
    if not all_names or not before or not after:
        return None
    shifts = {}
    for name in all_names:
        a = _finite([p[name] for p in before if name in p])
        b = _finite([p[name] for p in after if name in p])
        shifts[name] = float((np.median(b) - np.median(a)) / robust_spread(a)) if len(a) and len(b) else 0.0
    names = sorted(sorted(shifts, key=lambda n: -abs(shifts[n]))[:MAX_PROPERTIES], key=lambda n: abs(shifts[n]))
    changes = [shifts[n] for n in names]
    figure = Figure(figsize=(8, 0.35 * len(names) + 1.2))
    axes = figure.add_subplot()
    axes.barh(names, changes, color=["tab:red" if abs(c) > 3 else "tab:blue" for c in changes])
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_xscale("symlog", linthresh=3)  # a few huge shifts must not flatten the rest
    axes.set_xlabel("change of the median after the alert, in robust spreads before it")
    axes.set_title(f"image property shifts (largest {len(names)} of {len(all_names)})")
    figure.subplots_adjust(left=0.22, right=0.98, bottom=0.6 / figure.get_figheight(), top=1 - 0.35 / figure.get_figheight())
    return _png(figure)


def _finite(values: list[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array[np.isfinite(array)]


def diagnosis_html(diagnosis: dict[str, Any]) -> str:
    """Per source: the ranked causes and the evidence table an on-call engineer reads first."""
    parts = []
    for source, found in sorted(diagnosis.items()):
        causes = ", ".join(f"{html.escape(str(c))} {float(s):.2f}" for c, s in found.get("causes", []) if float(s) > 0) or "none"
        subkind = f" ({html.escape(found['subkind'])})" if found.get("subkind") else ""
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in (
                str(e.get("property", "")), f"{e.get('reference', float('nan')):.4g}", f"{e.get('current', float('nan')):.4g}",
                f"{e.get('effect', float('nan')):+.1f}", f"{e.get('q_value', float('nan')):.1e}", str(e.get("cause", "")), str(e.get("subkind", "")),
            )) + "</tr>"
            for e in found.get("evidence", [])[:12]
        )
        table = (
            "<table class='evidence'><tr><th>property</th><th>reference</th><th>current</th><th>effect (spreads)</th>"
            f"<th>q-value</th><th>cause</th><th>sub-kind</th></tr>{rows}</table>" if rows else "<p>no significant property</p>"
        )
        notes = "".join(f"<li>{html.escape(str(n))}</li>" for n in found.get("notes", []))
        slices = [x for x in (found.get("slices") or {}).get("slices", []) if x.get("significant")][:5]
        if slices:
            notes += "<li>drifting slices: " + ", ".join(
                f"{html.escape(str(x['slice']))} (score {float(x['score']):.1f}, q={float(x['q_value']):.1e}, {int(x['support'])} frames)" for x in slices
            ) + "</li>"
        parts.append(
            f"<h3>{html.escape(source)}: {html.escape(str(found.get('top', 'unknown')))}{subkind}</h3>"
            f"<p>cause scores: {causes}</p>{table}" + (f"<ul>{notes}</ul>" if notes else "")
        )
    return "".join(parts) or "<p>no diagnosis recorded</p>"


def _images(title: str, thumbs: list[str], alt: str) -> str:
    if not thumbs:
        return f"<h3>{html.escape(title)}</h3><p>none recorded</p>"
    tags = "".join(f'<img class="thumb" alt="{html.escape(alt)}" src="data:image/jpeg;base64,{t}">' for t in thumbs)
    return f"<h3>{html.escape(title)}</h3><div>{tags}</div>"


def render_report(
    manifest: dict[str, Any],
    before: list[np.ndarray],
    after: list[np.ndarray],
    reference: list[np.ndarray],
    properties_before: list[dict[str, float]],
    properties_after: list[dict[str, float]],
) -> bytes:
    """The report page as UTF-8 bytes."""
    alert = manifest["alert"]
    plots = [
        ("drift timeline", timeline_plot(manifest.get("drift_timeline", []))),
        ("property shifts", property_plot(properties_before, properties_after)),
    ]
    plot_html = "".join(
        f'<h2>{html.escape(name)}</h2><img class="plot" alt="{html.escape(name)}" src="data:image/png;base64,{png}">'
        if png
        else f"<h2>{html.escape(name)}</h2><p>no data recorded</p>"
        for name, png in plots
    )
    diagnosis = json.dumps(manifest.get("diagnosis", {}), indent=2, sort_keys=True)
    labels = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in sorted(alert["labels"].items())
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>virk incident {html.escape(manifest['model'])} {html.escape(alert['fingerprint'])}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; max-width: 70em; }}
img.thumb {{ margin: 2px; border: 1px solid #ccc; }}
img.plot {{ max-width: 100%; }}
th {{ text-align: left; padding-right: 1em; }}
table.evidence td {{ padding-right: 1em; font-variant-numeric: tabular-nums; }}
pre {{ background: #f4f4f4; padding: .5em; overflow-x: auto; }}
</style></head><body>
<h1>Incident: {html.escape(manifest['model'])} — {html.escape(alert['labels'].get('alertname', 'alert'))}</h1>
<p>Alert {html.escape(alert['fingerprint'])} started {html.escape(alert['startsAt'])}; top cause:
<b>{html.escape(str(manifest.get('cause', 'unknown')))}</b>; {len(manifest.get('frames', []))} frames,
sources {html.escape(', '.join(manifest.get('sources', [])))}.</p>
<table>{labels}</table>
{_images("reference", [_thumbnail(f) for f in _pick(reference, THUMBS_PER_SIDE)], "reference frame")}
{_images("before the alert", [_thumbnail(f) for f in _pick(before, THUMBS_PER_SIDE)], "frame before the alert")}
{_images("around and after the alert", [_thumbnail(f) for f in _pick(after, THUMBS_PER_SIDE)], "frame after the alert")}
{plot_html}
<h2>diagnosis</h2>{diagnosis_html(manifest.get("diagnosis", {}))}
<details><summary>diagnosis as recorded (JSON)</summary><pre>{html.escape(diagnosis)}</pre></details>
<h2>replay</h2><pre>virk-exporter bundle verify bundle.zip
virk-exporter bundle replay bundle.zip --predict your_module:predict</pre>
</body></html>
"""
    return page.encode("utf-8")
