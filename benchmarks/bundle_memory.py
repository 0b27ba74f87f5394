"""Peak memory of `virk-exporter bundle verify` / `replay` on crafted bundles (issue 15).

Each case runs the real CLI in a fresh process; peak RSS comes from the kernel (wait4). Cases:

* good: a normal 16-frame bundle (the baseline: Python, torch, OpenCV loaded);
* zeros: four entries of 1016 MiB of zeros (~4 MB zipped, within the 4 GiB total limit),
  listed with correct digests;
* huge-png: a real 16000x16000 PNG (~0.75 MB, 768 MB decoded) as every frame;
* embedder: a valid bundle whose config names an embedder of size=3000.

    .venv/bin/python benchmarks/bundle_memory.py
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from incident_helpers import MODEL, alert, context  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from virk_exporter.incidents.bundle import _seal, build_bundle  # noqa: E402


def parts(data: bytes) -> tuple[dict, dict[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        files = {n: z.read(n) for n in z.namelist()}
    return json.loads(files["manifest.json"]), files


def zeros_bundle(good: bytes, path: Path, entries: int = 4, size: int = 1 << 30) -> None:
    """Streamed: four 1 GiB entries are never in this process's memory either."""
    manifest, files = parts(good)
    digest = hashlib.sha256()
    chunk = b"\0" * (1 << 20)
    for _ in range(size // len(chunk)):
        digest.update(chunk)
    listed = {n: hashlib.sha256(v).hexdigest() for n, v in files.items() if n not in ("manifest.json", "manifest.sha256")}
    listed.update({f"zeros/{i}.bin": digest.hexdigest() for i in range(entries)})
    manifest = dict(manifest, files=dict(sorted(listed.items())))
    manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    files["manifest.json"], files["manifest.sha256"] = manifest_bytes, (hashlib.sha256(manifest_bytes).hexdigest() + "\n").encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
        for i in range(entries):
            info = zipfile.ZipInfo(f"zeros/{i}.bin")
            info.compress_type = zipfile.ZIP_DEFLATED
            with z.open(info, "w", force_zip64=True) as out:
                for _ in range(size // len(chunk)):
                    out.write(chunk)


def huge_png(width: int = 16000, height: int = 16000) -> bytes:
    """A valid grayscale PNG, compressed row by row (never whole in memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    compressor, idat, row = zlib.compressobj(9), [], b"\0" * (width + 1)
    for _ in range(height):
        idat.append(compressor.compress(row))
    idat.append(compressor.flush())
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b"")


def resealed(good: bytes, change) -> bytes:
    manifest, files = parts(good)
    change(manifest, files)
    return _seal(files, {k: v for k, v in manifest.items() if k != "files"})


def peak_rss_mb(argv: list[str], report: Path) -> tuple[float, int, str]:
    """Through /usr/bin/time: a child forked from this (large) process would count our pages
    in its own peak RSS; time(1) forks the CLI from a small process."""
    done = subprocess.run(["/usr/bin/time", "-o", str(report), "-f", "%M", *argv], capture_output=True, text=True)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return int(report.read_text().split()[-1]) / 1024, done.returncode, lines[-1][:90] if lines else ""


def main() -> None:
    good = build_bundle(alert(), MODEL, context(n_frames=16))[0]
    png = huge_png()
    table = Table(title=f"bundle CLI peak memory ({platform.machine()}, Python {platform.python_version()})")
    for column in ("bundle", "zip MB", "command", "exit", "peak RSS MB", "last line"):
        table.add_column(column)
    with tempfile.TemporaryDirectory() as tmp:
        cases = {"good": Path(tmp) / "good.zip", "zeros": Path(tmp) / "zeros.zip", "huge-png": Path(tmp) / "png.zip",
                 "embedder": Path(tmp) / "embedder.zip"}
        cases["good"].write_bytes(good)
        zeros_bundle(good, cases["zeros"], size=(1 << 30) - (8 << 20))  # four ~1 GiB entries, within the 4 GiB total

        def as_frames(manifest, files):
            for entry in manifest["frames"][:4]:
                files[entry["path"]] = png
            manifest["frames"] = manifest["frames"][:4]
        cases["huge-png"].write_bytes(resealed(good, as_frames))

        def embedder(manifest, files):
            manifest["config"]["embedder_id"] = "random-conv/v2/size=3000/seed=0/0123456789ab"
            manifest["reference_file"] = None
            files.pop("reference/reference.virkref", None)
        cases["embedder"].write_bytes(resealed(good, embedder))
        for name, path in cases.items():
            for command in ("verify", "replay"):
                rss, code, last = peak_rss_mb([sys.executable, "-m", "virk_exporter.cli", "bundle", command, str(path)], Path(tmp) / "rss")
                table.add_row(name, f"{path.stat().st_size / 1e6:.2f}", command, str(code), f"{rss:.0f}", last)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
