"""Drift benchmark: our batched-permutation MMD vs alibi-detect and TorchDrift, same data, one run.

    bash benchmarks/setup_peers.sh                 # once: peers in .bench-venv
    .bench-venv/bin/python benchmarks/drift.py     # our package is imported from this tree

Data: x_ref and x are n=1000 × d=512 standard normal; "drift" adds 0.1 to every coordinate of x.
Timings are the median of ``--repeats`` calls of each library's test on the same arrays, after a
warm-up call; detector construction ("fit") is timed separately, also as a median, because ours does the
reference-only work there (median bandwidth, the cached reference kernel block) and peers do
it inside every call. Peers that are not installed are reported as missing, not skipped
silently. Also reported: ours at n = 10,000 vs 10,000, and the default encoder's frames/s.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from virk_exporter.drift import MMDDrift  # noqa: E402
from virk_exporter.embed.embedders import RandomConvEncoder  # noqa: E402


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()  # warm-up (allocations, lazy init, caches) ...
    first = time.perf_counter() - t
    # ... except for calls so long (peers: 10-60 s here) that one-off costs vanish in them;
    # those count as the first repeat, which keeps the run under ~10 minutes.
    times = [first] if first > 2.0 else []
    while len(times) < repeats:
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def data(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x_ref = rng.normal(size=(n, d)).astype(np.float32)
    same = rng.normal(size=(n, d)).astype(np.float32)
    drifted = (rng.normal(size=(n, d)) + 0.1).astype(np.float32)
    return x_ref, same, drifted


def ours(x_ref: np.ndarray, same: np.ndarray, drifted: np.ndarray, perms: int, repeats: int, device: str) -> dict:
    def build() -> MMDDrift:
        det = MMDDrift(x_ref, n_permutations=perms, p_val=0.05, seed=0, device=device)
        det.permutations(len(same))  # the cached reference block: fit-time work, timed as such
        return det

    fit, det = timed(build, repeats)
    sec, r0 = timed(lambda: det.test(same), repeats)
    r1 = det.test(drifted)
    return {"fit_s": fit, "test_s": sec, "p_same": r0.p_value, "drift_same": r0.drift, "p_drift": r1.p_value, "drift_drift": r1.drift}


def alibi(x_ref: np.ndarray, same: np.ndarray, drifted: np.ndarray, perms: int, repeats: int, device: str) -> dict:
    from alibi_detect.cd import MMDDrift as AlibiMMD

    fit, det = timed(lambda: AlibiMMD(x_ref, backend="pytorch", p_val=0.05, n_permutations=perms, device=device), repeats)
    sec, r0 = timed(lambda: det.predict(same), repeats)
    r1 = det.predict(drifted)
    return {"fit_s": fit, "test_s": sec, "p_same": float(r0["data"]["p_val"]), "drift_same": bool(r0["data"]["is_drift"]),
            "p_drift": float(r1["data"]["p_val"]), "drift_drift": bool(r1["data"]["is_drift"])}


def torchdrift(x_ref: np.ndarray, same: np.ndarray, drifted: np.ndarray, perms: int, repeats: int, device: str) -> dict:
    from torchdrift.detectors import KernelMMDDriftDetector

    def build() -> KernelMMDDriftDetector:
        det = KernelMMDDriftDetector(n_perm=perms)
        det.fit(torch.from_numpy(x_ref).to(device))
        return det

    fit, det = timed(build, repeats)
    y0, y1 = torch.from_numpy(same).to(device), torch.from_numpy(drifted).to(device)
    sec, p0 = timed(lambda: det.compute_p_value(y0), repeats)
    p1 = det.compute_p_value(y1)
    return {"fit_s": fit, "test_s": sec, "p_same": float(p0), "drift_same": float(p0) <= 0.05,
            "p_drift": float(p1), "drift_drift": float(p1) <= 0.05}


def encoder_fps(device: str, repeats: int) -> float:
    enc = RandomConvEncoder(device=device)
    frames = np.random.default_rng(0).integers(0, 256, size=(256, 480, 640, 3), dtype=np.uint8)
    sec, _ = timed(lambda: enc.embed(frames), repeats)
    return 256 / sec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--big-n", type=int, default=10_000)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--no-peers", action="store_true", help="time ours only (a quick check of the script)")
    args = ap.parse_args()
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(150, Console().width))  # the table is wide; logs are not ttys
    cpu = platform.processor() or platform.machine()
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
                  f"{cpu}, python {platform.python_version()}; median of {args.repeats}")
    import resource

    # Ours at large n first, so the process's peak memory right after it is ours alone.
    console.print(f"ours at n = {args.big_n} vs {args.big_n} ...")
    bx, bs, bd = data(args.big_n, 512, seed=1)
    big = ours(bx, bs, bd, 100, max(1, min(args.repeats, 3)), args.device)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    del bx, bs, bd
    x_ref, same, drifted = data(1000, 512, seed=0)
    rows: list[dict] = []
    for perms, peer_name, peer in ((100, "alibi-detect 0.13 MMDDrift(pytorch)", alibi), (1000, "TorchDrift KernelMMDDriftDetector", torchdrift)):
        console.print(f"[bold]{perms} permutations[/]: ours ...")
        mine = ours(x_ref, same, drifted, perms, args.repeats, args.device)
        rows.append({"detector": "virk-exporter MMDDrift", "perms": perms, "n": 1000, **mine})
        if args.no_peers:
            continue
        console.print(f"{peer_name} ...")
        try:
            theirs = peer(x_ref, same, drifted, perms, args.repeats, args.device)
        except ImportError as exc:
            rows.append({"detector": peer_name, "perms": perms, "n": 1000, "missing": str(exc)})
            continue
        theirs["speedup"] = theirs["test_s"] / mine["test_s"]
        theirs["speedup_cold"] = (theirs["test_s"] + theirs["fit_s"]) / (mine["test_s"] + mine["fit_s"])
        rows.append({"detector": peer_name, "perms": perms, "n": 1000, **theirs})
    rows.append({"detector": "virk-exporter MMDDrift", "perms": 100, "n": args.big_n, **big})
    fps = encoder_fps(args.device, args.repeats)

    table = Table(title="MMD two-sample test, d = 512, n vs n (seconds; median)")
    for col in ("detector", "perms", "n", "fit s", "test s", "ours faster (test / fit+test)", "p no-drift", "drift?", "p drift", "drift?"):
        table.add_column(col, justify="right" if col not in ("detector",) else "left")
    for r in rows:
        if "missing" in r:
            table.add_row(r["detector"], str(r["perms"]), str(r["n"]), "-", "-", f"not installed: {r['missing']}", "", "", "", "")
            continue
        speed = f"{r['speedup']:.1f}× / {r['speedup_cold']:.1f}×" if "speedup" in r else ""
        table.add_row(r["detector"], str(r["perms"]), str(r["n"]), f"{r['fit_s']:.3f}", f"{r['test_s']:.4f}", speed,
                      f"{r['p_same']:.3f}", str(r["drift_same"]), f"{r['p_drift']:.3f}", str(r["drift_drift"]))
    console.print(table)
    agree = {perms: len({(r["drift_same"], r["drift_drift"]) for r in rows if r.get("perms") == perms and r.get("n") == 1000 and "missing" not in r}) == 1 for perms in (100, 1000)}
    console.print(f"decisions agree: {agree}")
    console.print(f"default encoder (random-conv v1, 640×480 frames → 64×64, batch 256): {fps:.0f} frames/s")
    console.print(f"peak resident memory after ours at n = {args.big_n} (data + torch included): {rss:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "agree": agree, "encoder_fps": fps, "device": args.device, "max_rss_mib": rss,
                                         "threads": torch.get_num_threads(), "torch": torch.__version__}, indent=2))


if __name__ == "__main__":
    main()
