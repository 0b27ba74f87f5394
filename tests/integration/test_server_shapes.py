"""Real servers with several processes: gunicorn -w 3 (with and without --preload) + Flask,
uvicorn --workers 2 + an async Starlette predict. Each under a real load client: the frames
of all workers are counted, one monitoring worker serves them all, counters never go
backwards (a real Prometheus scrapes one of them), SIGTERM drains, no process is left."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from helpers import sample_value
from servers import free_port, http_get, prometheus_query, start_prometheus, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
APPS = Path(__file__).resolve().parent / "shapes"
BATCH = 2  # frames per request (shapes/*_app.py)


def start_service(argv: list[str], tmp_path: Path, ready_url: str, **env_extra: str) -> tuple[subprocess.Popen, Path, Path]:
    run_dir = tmp_path / "run"  # this test's own rendezvous directory: its workers are easy to find
    env = dict(os.environ, VIRK_TEST_MODEL="shapes", VIRK_STORE=str(tmp_path / "store"), VIRK_RUNTIME_DIR=str(run_dir), **env_extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(APPS), env.get("PYTHONPATH", "")])
    log = tmp_path / "server.log"
    process = subprocess.Popen(argv, cwd=APPS, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def ready() -> bool:
        assert process.poll() is None, f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}"
        try:
            return httpx.get(ready_url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, 180, interval=0.3, what="the service and its monitoring worker")
    except BaseException:  # a service that never got ready must not outlive the test
        stop(process, run_dir)
        raise
    return process, run_dir, log


def monitoring_workers(run_dir: Path) -> list[int]:
    """PIDs of monitoring worker processes of this test (their command line names the socket)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "virk_exporter.worker" in cmdline and str(run_dir) in cmdline:
            pids.append(int(proc.name))
    return pids


def load(url: str, requests: int, pace_s: float = 0.0, threads: int = 6) -> list[dict]:
    """A bounded load client: ``requests`` POSTs from a few threads, each on a new connection:
    the server's processes share one listening socket, and the kernel may hand the few
    keep-alive connections of a pool all to one of them (seen: 60 requests on 6 connections,
    all served by one of two uvicorn workers)."""
    with httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0)) as client:

        def one(_: int) -> dict:
            reply = client.post(url)
            reply.raise_for_status()
            time.sleep(pace_s)
            return reply.json()

        with ThreadPoolExecutor(threads) as pool:
            return list(pool.map(one, range(requests)))


def frames_total(metrics_url: str) -> float:
    return sample_value(httpx.get(metrics_url, timeout=5).text, "virk_frames_total", model="shapes")


def stop_and_check_drained(process: subprocess.Popen, run_dir: Path, log: Path, batches: int) -> None:
    """SIGTERM the server: every batch is processed before the monitoring worker exits, and no process is left."""
    os.kill(process.pid, signal.SIGTERM)
    process.wait(timeout=60)
    wait_until(lambda: not monitoring_workers(run_dir), 20, what="the monitoring worker to exit after the last process")
    exits = re.findall(r"exiting after (\d+) batches", log.read_text())
    assert exits == [str(batches)], log.read_text()[-3000:]


def check_service(
    process: subprocess.Popen,
    run_dir: Path,
    log: Path,
    predict_url: str,
    metrics_url: str,
    requests: int,
    pace_s: float = 0.0,
    served_url: str | None = None,
    before_stop=None,
) -> None:
    replies = load(predict_url, requests, pace_s)
    assert len({r["pid"] for r in replies}) >= 2, "the load should reach several server processes"
    assert len({r["first_id"] for r in replies}) == requests, "frame ids are unique across processes"
    seen = []

    def counted() -> bool:
        seen.append(frames_total(metrics_url))
        return seen[-1] == requests * BATCH

    wait_until(counted, 15, interval=0.2, what="every process's frames in one scrape")
    seen += [frames_total(metrics_url) for _ in range(12)]  # scrapes land on whichever process answers
    assert seen == sorted(seen), f"virk_frames_total went backwards between scrapes: {seen}"
    assert seen[-1] == requests * BATCH
    if served_url is not None:  # exporter.serve() called in every process: one of them serves all
        assert frames_total(served_url) == requests * BATCH
    assert len(monitoring_workers(run_dir)) == 1, "one monitoring worker per model and host"
    if before_stop is not None:  # while the service still runs (e.g. what a real Prometheus saw)
        before_stop()
    more = load(predict_url, 20)  # then SIGTERM at once: these must still be drained
    stop_and_check_drained(process, run_dir, log, requests + len(more))


def stop(process: subprocess.Popen, run_dir: Path) -> None:
    """Leave nothing behind whatever happened (by PID)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    for pid in monitoring_workers(run_dir):
        os.kill(pid, signal.SIGKILL)


def gunicorn(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "-w", "3", "-b", f"127.0.0.1:{port}", "-c", str(APPS / "gunicorn_conf.py"), *extra, "wsgi_app:app"]


def scrape_health(prometheus) -> list[tuple[str, str, float]]:
    """(health, lastError, lastScrapeDuration) of each target: why a series may be missing."""
    targets = json.loads(http_get(f"{prometheus.url}/api/v1/targets")[1])["data"]["activeTargets"]
    return [(t["health"], t["lastError"], t["lastScrapeDuration"]) for t in targets]


@pytest.mark.slow
def test_gunicorn_three_workers_one_monitor_and_a_real_prometheus_sees_no_reset(tmp_path):
    port, served = free_port(), free_port()
    process, run_dir, log = start_service(gunicorn(port), tmp_path, f"http://127.0.0.1:{port}/-/ready", VIRK_TEST_SERVE_PORT=str(served))
    prometheus = start_prometheus(tmp_path / "prometheus", [f"127.0.0.1:{port}"])
    wait_until(lambda: prometheus_query(prometheus, 'up{job="virk"} == 1'), 30, what=f"Prometheus' first scrape: {scrape_health(prometheus)}")
    series = 'virk_frames_total{model="shapes"}'

    def prometheus_sees_no_reset() -> None:
        # Asked while the service runs: once stopped, Prometheus keeps only what it scraped, and
        # during the load most scrapes time out (scrape_timeout = the 1 s interval, three busy
        # sync workers), so there may be no sample at all. Wait for several successful scrapes
        # of the final count, which land on whichever worker accepts them: a counter of one
        # worker's own would jump between them and show as a reset.
        def scraped() -> list:
            done = prometheus_query(prometheus, f"max_over_time({series}[10m]) >= {90 * BATCH}")
            return done and prometheus_query(prometheus, f"count_over_time({series}[10m]) >= 6")

        wait_until(scraped, 30, interval=0.5, what=f"six scrapes with the final count: {scrape_health(prometheus)}")
        results = prometheus_query(prometheus, f"resets({series}[10m])")
        assert results and all(float(r["value"][1]) == 0 for r in results), (results, scrape_health(prometheus))

    try:
        base = f"http://127.0.0.1:{port}"
        check_service(
            process, run_dir, log, f"{base}/predict", f"{base}/metrics", 90, pace_s=0.25,
            served_url=f"http://127.0.0.1:{served}/metrics", before_stop=prometheus_sees_no_reset,
        )
    finally:
        prometheus.stop()
        stop(process, run_dir)


@pytest.mark.slow
def test_gunicorn_preload_forked_workers_are_monitored(tmp_path):
    port, served = free_port(), free_port()  # serve() in the master, before the fork: the workers must not inherit it as a zombie
    process, run_dir, log = start_service(gunicorn(port, "--preload"), tmp_path, f"http://127.0.0.1:{port}/-/ready", VIRK_TEST_SERVE_PORT=str(served))
    try:
        base = f"http://127.0.0.1:{port}"
        check_service(process, run_dir, log, f"{base}/predict", f"{base}/metrics", 60, served_url=f"http://127.0.0.1:{served}/metrics")
    finally:
        stop(process, run_dir)


@pytest.mark.slow
def test_gunicorn_one_reference_a_scripted_blur_and_its_bundle(tmp_path):
    """Three workers feed one drift state: a blur on the camera is detected whichever worker
    got which frames, and a webhook landing on any worker builds the bundle."""
    from virk_exporter.incidents.webhook import make_alert_payload

    port = free_port()
    process, run_dir, log = start_service(gunicorn(port), tmp_path, f"http://127.0.0.1:{port}/-/ready", VIRK_TEST_SMALL="1")
    try:
        base = f"http://127.0.0.1:{port}"
        load(f"{base}/predict?camera=1", 40)  # 80 clean frames: the reference (32) and clean tests
        wait_until(lambda: frames_total(f"{base}/metrics") == 80, 15, what="the clean frames")

        def blur_detected() -> bool:
            load(f"{base}/predict?camera=1&blur=1", 8)
            text = httpx.get(f"{base}/metrics", timeout=5).text
            detected = {line for line in text.splitlines() if line.startswith("virk_drift_detected{") and line.endswith(" 1.0")}
            assert not detected or any('fingerprint="blur"' in line for line in detected), detected
            return bool(detected)

        wait_until(blur_detected, 120, interval=0.2, what="the blur to be detected")
        body = make_alert_payload("shapes", labels={"source": "default", "fingerprint": "blur"})
        reply = httpx.post(f"{base}/api/v1/alerts", content=body, headers={"content-type": "application/json"}, timeout=30)
        assert reply.status_code in (200, 202), reply.text
        wait_until(lambda: list((tmp_path / "store").rglob("*.zip")), 60, what="the bundle in the store")
        assert len(list((tmp_path / "store").rglob("*.zip"))) == 1
        assert len(monitoring_workers(run_dir)) == 1
    finally:
        stop(process, run_dir)


@pytest.mark.slow
def test_uvicorn_two_workers_async_predict(tmp_path):
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "--workers", "2", "--host", "127.0.0.1", "--port", str(port), "asgi_app:app"]
    process, run_dir, log = start_service(argv, tmp_path, f"http://127.0.0.1:{port}/virk/-/ready")
    try:
        base = f"http://127.0.0.1:{port}"
        check_service(process, run_dir, log, f"{base}/predict", f"{base}/virk/metrics", 60)
    finally:
        stop(process, run_dir)
