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
from datetime import datetime, timezone
from typing import Any

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from virk_exporter.frames import evenly_spaced
from virk_exporter.worker.recorder import encode_frame


THUMB_WIDTH = 240  # large enough that a defocus or a shift shows
THUMBS_PER_SIDE = 6


def _png(figure: Figure) -> str:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode()


def _thumbnail(rgb: np.ndarray) -> str:
    height = max(1, round(rgb.shape[0] * THUMB_WIDTH / rgb.shape[1]))
    small = cv2.resize(rgb, (THUMB_WIDTH, height), interpolation=cv2.INTER_AREA)
    return base64.b64encode(encode_frame(small, "jpeg", 80)).decode()


ONSET_COLOUR = "#e6007e"  # the onset marker; a colour no other mark of the report uses (the screenshot test finds it)
ALERT_COLOUR = "#555555"
MAX_PROPERTIES = 4  # charted properties: the first rows of the evidence table


def _markers(axes: Any, onset: float | None, alert_start: float | None, xs: np.ndarray) -> None:
    """The onset (first detection) and the alert's start as vertical lines, x in seconds from the
    onset. The alert's start only when it falls near the recorded data (the summary says when)."""
    if onset is not None:
        axes.axvline(0.0, color=ONSET_COLOUR, linewidth=2.5, label="onset (first detection)")
    if alert_start is not None and onset is not None and len(xs):
        lo, hi = float(np.nanmin(xs)), float(np.nanmax(xs))
        margin = 0.25 * (hi - lo) + 5.0
        if lo - margin <= alert_start - onset <= hi + margin:
            axes.axvline(alert_start - onset, color=ALERT_COLOUR, linewidth=1.2, linestyle=":", label="alert started")


def _plain_ticks(axis: Any) -> None:
    """Plain numbers (no offset, no 10^k multiplier text that gets clipped), five or so."""
    axis.set_major_locator(MaxNLocator(5))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))


def timeline_plot(timeline: list[dict], onset: float | None, alert_start: float | None, p_val: float | None) -> str | None:
    """The drift tests over time: p-value (log axis, against the test's level ``p_val``) above,
    the statistic against its own threshold below; detections in red. None without data."""
    points = sorted((p for p in timeline if p.get("statistic") is not None or p.get("p_value") is not None), key=lambda p: p["timestamp"])
    if not points:
        return None
    zero = onset if onset is not None else float(points[0]["timestamp"])
    figure = Figure(figsize=(12, 4.2))
    p_axes, s_axes = figure.subplots(2, 1, sharex=True)
    for source in sorted({str(p.get("source", "")) for p in points}):
        series = [p for p in points if str(p.get("source", "")) == source]
        xs = np.array([float(p["timestamp"]) - zero for p in series])
        detected = np.array([bool(p.get("detected")) for p in series])
        for axes, key in ((p_axes, "p_value"), (s_axes, "statistic")):
            ys = np.array([np.nan if p.get(key) is None else float(p[key]) for p in series])
            line = axes.plot(xs, ys, marker="o", markersize=3, label=source)[0]
            if detected.any():
                axes.scatter(xs[detected], ys[detected], color="red", zorder=3, s=18)
            if key == "statistic":
                thresholds = np.array([np.nan if p.get("threshold") is None else float(p["threshold"]) for p in series])
                axes.plot(xs, thresholds, color=line.get_color(), linestyle="--", linewidth=1, label=f"{source} threshold")
    if p_val is not None:
        p_axes.axhline(p_val, color="grey", linestyle="--", linewidth=1, label=f"level {p_val:g}")
    p_axes.set_yscale("log")
    p_axes.set_ylabel("p-value")
    s_axes.set_ylabel("MMD statistic")
    every_x = np.array([float(p["timestamp"]) - zero for p in points])
    for axes in (p_axes, s_axes):
        _markers(axes, onset, alert_start, every_x)
        _plain_ticks(axes.xaxis)
        axes.legend(fontsize=7, loc="upper left")  # "best" searches placements: slow
    _plain_ticks(s_axes.yaxis)
    s_axes.set_xlabel("seconds from the onset")
    p_axes.set_title("drift tests (red: drift detected)")
    figure.subplots_adjust(left=0.07, right=0.99, bottom=0.12, top=0.93, hspace=0.12)  # fixed: tight_layout renders twice
    return _png(figure)


def charted_properties(diagnosis: dict[str, Any], frames: list[dict]) -> list[str]:
    """The properties the chart shows: the first ``MAX_PROPERTIES`` of the evidence table (in its
    order) that the recorded frames carry."""
    measured = {k for f in frames for k in f.get("properties", {})}
    names = [str(e["property"]) for e in diagnosis.get("evidence", []) if e.get("property") in measured]
    return list(dict.fromkeys(names))[:MAX_PROPERTIES]


def property_plot(frames: list[dict], reference: dict[str, np.ndarray], names: list[str], onset: float | None, alert_start: float | None) -> str | None:
    """Each charted property frame by frame against the source's reference (5th-95th percentile
    shaded, median dashed), the onset marked: a fault that began before the alert shows where
    the values leave the band. None without data."""
    if not names or not frames:
        return None
    zero = onset if onset is not None else float(frames[0]["timestamp"])
    figure = Figure(figsize=(12, 1.6 * len(names) + 0.8))
    axes_list = np.atleast_1d(figure.subplots(len(names), 1, sharex=True))
    for axes, name in zip(axes_list, names):
        points = [(float(f["timestamp"]) - zero, float(f["properties"][name])) for f in frames if name in f.get("properties", {})]
        xs, ys = (np.array(v) for v in zip(*points)) if points else (np.array([]), np.array([]))
        band = _finite(list(reference.get(name, [])))
        if len(band):
            low, mid, high = np.quantile(band, (0.05, 0.5, 0.95))
            axes.axhspan(low, high, color="tab:green", alpha=0.18, label="reference 5-95%")
            axes.axhline(mid, color="tab:green", linestyle="--", linewidth=1, label="reference median")
        axes.plot(xs, ys, marker=".", markersize=4, linewidth=0.8, color="tab:blue", label="frames")
        _markers(axes, onset, alert_start, xs)
        axes.set_ylabel(name, fontsize=9)
        _plain_ticks(axes.yaxis)
        _plain_ticks(axes.xaxis)
    axes_list[0].legend(fontsize=7, loc="upper left", ncol=3)
    axes_list[0].set_title(f"image properties against the reference ({', '.join(names)})")
    axes_list[-1].set_xlabel("seconds from the onset")
    height = figure.get_figheight()
    figure.subplots_adjust(left=0.08, right=0.99, bottom=0.55 / height, top=1 - 0.35 / height, hspace=0.15)
    return _png(figure)


def reference_properties(reference_file: bytes | None, source: str) -> dict[str, np.ndarray]:
    """The source's reference image properties from the bundle's .virkref ({} when absent)."""
    if not reference_file:
        return {}
    from virk_exporter.reference.build import Reference

    sources = Reference.load(io.BytesIO(reference_file)).sources
    entry = sources.get(source) or (next(iter(sources.values())) if len(sources) == 1 else None)
    if entry is None:
        return {}
    if entry.properties:
        return dict(entry.properties)
    fingerprinter = entry.fingerprinter()  # older files keep them only in the fingerprinter's state
    return dict(fingerprinter.reference_properties) if fingerprinter is not None else {}


def _finite(values: list[float]) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array[np.isfinite(array)]


def diagnosis_html(diagnosis: dict[str, Any]) -> str:
    """Per source: the ranked causes and the evidence table an on-call engineer reads first."""
    parts = []
    for source, found in sorted(diagnosis.items()):
        causes = ", ".join(f"{html.escape(str(c))} {float(s):.2f}" for c, s in found.get("causes", []) if float(s) > 0) or "none"
        subkind = f" ({html.escape(found['subkind'])})" if found.get("subkind") else ""
        likely = sorted((found.get("probabilities") or {}).items(), key=lambda cp: -float(cp[1]))[:3]
        named = ("<p>naming model: " + ", ".join(f"{html.escape(str(c))} {float(p):.0%}" for c, p in likely) + "</p>") if likely else ""
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
            f"<p>cause scores: {causes}</p>{named}{table}" + (f"<ul>{notes}</ul>" if notes else "")
        )
    return "".join(parts) or "<p>no diagnosis recorded</p>"


def _time(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%H:%M:%S.%f")[:-5]


def _images(title: str, frames: list[Any], alt: str, onset: float | None) -> str:
    """Thumbnails captioned with source, frame id, UTC time and seconds from the onset."""
    if not frames:
        return f"<h3>{html.escape(title)}</h3><p>none recorded</p>"
    tags = []
    for frame in frames:
        rgb = frame if isinstance(frame, np.ndarray) else frame.decode()
        caption = ""
        if not isinstance(frame, np.ndarray):
            offset = f" ({frame.timestamp - onset:+.1f} s)" if onset is not None else ""
            caption = f"<figcaption>{html.escape(frame.source)} · frame {frame.frame_id} · {_time(frame.timestamp)}{offset}</figcaption>"
        tags.append(f'<figure><img class="thumb" alt="{html.escape(alt)}" src="data:image/jpeg;base64,{_thumbnail(rgb)}">{caption}</figure>')
    return f"<h3>{html.escape(title)}</h3><div class='thumbs'>{''.join(tags)}</div>"


def _alert_source(manifest: dict[str, Any]) -> str:
    source = manifest["alert"]["labels"].get("source")
    sources = manifest.get("sources", [])
    return source if source else (sources[0] if sources else "")


def render_report(
    manifest: dict[str, Any],
    before: list[Any],
    after: list[Any],
    reference: list[np.ndarray],
    reference_file: bytes | None = None,
) -> bytes:
    """The report page as UTF-8 bytes. ``before``/``after``: the recorded frames to show (objects
    with ``decode()``, ``frame_id``, ``timestamp``, ``source``) before and from the onset."""
    alert = manifest["alert"]
    source = _alert_source(manifest)
    onset = manifest.get("onset")
    alert_start = _unix(alert["startsAt"])
    diagnosis = manifest.get("diagnosis", {})
    found = diagnosis.get(source) or (next(iter(diagnosis.values())) if len(diagnosis) == 1 else {})
    frames = [f for f in manifest.get("frames", []) if f.get("source") == source] or manifest.get("frames", [])
    names = charted_properties(found, frames)
    p_val = manifest.get("config", {}).get("p_val")
    plots = [
        ("image properties", property_plot(frames, reference_properties(reference_file, source), names, onset, alert_start), names),
        ("drift timeline", timeline_plot(manifest.get("drift_timeline", []), onset, alert_start, None if p_val is None else float(p_val)), []),
    ]
    plot_html = "".join(
        f'<h2>{html.escape(name)}</h2><img class="plot" alt="{html.escape(name)}" src="data:image/png;base64,{png}">'
        + (f'<p class="charted" data-properties="{html.escape(",".join(charted))}">charted: {html.escape(", ".join(charted))} '
           "(the first rows of the evidence table below); the magenta line is the onset</p>" if charted else "")
        if png
        else f"<h2>{html.escape(name)}</h2><p>no data recorded</p>"
        for name, png, charted in plots
    )
    recorded = json.dumps(diagnosis, indent=2, sort_keys=True)
    labels = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in sorted(alert["labels"].items()))
    cause = str(manifest.get("cause", "unknown"))
    subkind = f" ({found['subkind']})" if found.get("subkind") else ""
    onset_text = f"{_time(onset)} UTC, {alert_start - onset:.0f} s before the alert" if onset is not None and alert_start else "unknown"
    traces = sorted({f["trace_id"] for f in frames if f.get("trace_id") and onset is not None and float(f["timestamp"]) >= onset})
    links = [("Grafana (path under your Grafana URL)", alert.get("annotations", {}).get("dashboard", "")),
             ("Prometheus", alert.get("generatorURL", "")),
             ("traces after the onset", ", ".join(traces[:3]) + (f" and {len(traces) - 3} more" if len(traces) > 3 else ""))]
    link_rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>" + (f'<a href="{html.escape(v)}">{html.escape(v)}</a>' if v.startswith(("http://", "https://")) else html.escape(v)) + "</td></tr>"
        for k, v in links if v
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>virk incident {html.escape(manifest['model'])} {html.escape(source)} {html.escape(cause)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; max-width: 70em; }}
.summary {{ font-size: 1.25em; background: #fff4e5; border-left: 6px solid {ONSET_COLOUR}; padding: .6em 1em; }}
figure {{ display: inline-block; margin: 2px; }}
figcaption {{ font-size: .75em; color: #444; }}
img.thumb {{ border: 1px solid #ccc; display: block; }}
img.plot {{ max-width: 100%; }}
th {{ text-align: left; padding-right: 1em; }}
table.evidence td {{ padding-right: 1em; font-variant-numeric: tabular-nums; }}
pre {{ background: #f4f4f4; padding: .5em; overflow-x: auto; }}
</style></head><body>
<h1>Incident: {html.escape(manifest['model'])} / {html.escape(source)}: {html.escape(cause)}{html.escape(subkind)}</h1>
<p class="summary">Source <b>{html.escape(source)}</b> of model <b>{html.escape(manifest['model'])}</b> drifted from its reference;
likely cause <b>{html.escape(cause)}{html.escape(subkind)}</b>. Onset (first detection): {html.escape(onset_text)}.
Alert {html.escape(alert['labels'].get('alertname', 'alert'))} {html.escape(alert['fingerprint'])} started {html.escape(alert['startsAt'])}.</p>
{plot_html}
<h2>evidence</h2>{diagnosis_html(diagnosis)}
<h2>frames</h2>
{_images("reference", evenly_spaced(reference, THUMBS_PER_SIDE), "reference frame", None)}
{_images("before the onset", before, "frame before the alert", onset)}
{_images("from the onset", after, "frame after the alert", onset)}
<h2>alert</h2><table>{labels}{link_rows}</table>
<h2>replay</h2><pre>virk-exporter bundle verify bundle.zip
virk-exporter bundle replay bundle.zip --predict {html.escape(manifest.get('predict') or 'MODULE:FUNCTION')}   # the function you decorated with @exporter.monitor</pre>
<details><summary>diagnosis as recorded (JSON)</summary><pre>{html.escape(recorded)}</pre></details>
<p>{len(manifest.get('frames', []))} frames from {html.escape(', '.join(manifest.get('sources', [])))}; {len(reference)} reference samples.</p>
</body></html>
"""
    return page.encode("utf-8")


def _unix(text: str) -> float | None:
    """Alertmanager's RFC 3339 time (nanoseconds allowed) as unix seconds; None for the zero time."""
    try:
        day, _, rest = text.partition("T")
        clock = rest.rstrip("Z").split(".")[0]
        moment = datetime.fromisoformat(f"{day}T{clock}+00:00")
    except ValueError:
        return None
    fraction = rest.rstrip("Z").partition(".")[2]
    return None if moment.year == 1 else moment.timestamp() + (float(f"0.{fraction}") if fraction else 0.0)
