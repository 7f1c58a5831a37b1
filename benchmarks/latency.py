"""Latency of one ``/register`` request through the app's API, as a client sees it.

Starts ``python app.py`` on a free loopback port (or uses ``--url``), then times
``gradio_client.Client.predict`` on a 256×256 pair (``examples/camera_*.png``): upload of both
images, queueing, the registration, all the pictures (warped PNG, checkerboards, differences,
three plotly figures), the scores, and the download of every returned file (``--no-download``:
the response only, files not fetched). Reports the median and the 95th percentile (linear
interpolation) over ``--repeats`` requests after ``--warmup`` untimed ones, the registration's
own time (from the scores table) for comparison, and the 1-minute load average before and
after (other work on the machine slows everything).

    python -m benchmarks.latency                       # the app's default method and checkpoint
    python -m benchmarks.latency --no-download            # the response alone
    python -m benchmarks.latency --method net+refine --repeats 10 --json out/latency.json

Targets: median ≤ 0.5 s with method "net" on a 2-core CPU (issue 5); ≤ 0.6 s with the default method (issue 13).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from regcore.pipeline import DEFAULT_METHOD

ROOT = Path(__file__).resolve().parent.parent
PAIR = (ROOT / "examples" / "camera_source.png", ROOT / "examples" / "camera_target.png")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connect(url: str, proc: subprocess.Popen | None, download: bool = True, timeout: float = 180.0):
    """A gradio_client.Client for ``url``, retrying while the app starts."""
    from gradio_client import Client

    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"app.py exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:  # the page first: then the API is up too
                response.read()
            return Client(url, verbose=False, download_files=download)
        except Exception:  # not listening yet: connection refused, or the config is not served yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def measure(
    url: str, method: str, model: str | None, repeats: int, warmup: int, proc: subprocess.Popen | None = None, download: bool = True
) -> dict:
    """Time ``repeats`` /register requests; returns the figures as a dict (seconds).

    ``download=False``: the client takes the response (with file URLs) without fetching the files.
    """
    from gradio_client import handle_file

    client = _connect(url, proc, download)
    kwargs = {"method": method, **({"model": model} if model else {})}
    walls, inner, summary = [], [], ""
    for i in range(warmup + repeats):
        start = time.perf_counter()
        out = client.predict(handle_file(PAIR[0]), handle_file(PAIR[1]), **kwargs, api_name="/register")
        wall = time.perf_counter() - start
        if i >= warmup:
            walls.append(wall)
            inner.append(next(row[2] for row in out[6]["data"] if row[0].startswith("time")))
        summary = out[7]
    return {
        "method": method,
        "downloads_files": download,
        "app_summary": summary.splitlines()[0],
        "repeats": repeats,
        "median_s": float(np.median(walls)),
        "p95_s": float(np.percentile(walls, 95)),
        "min_s": float(np.min(walls)),
        "max_s": float(np.max(walls)),
        "registration_median_s": float(np.median(inner)),
        "all_s": [round(w, 4) for w in walls],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=["net+patches", "net", "net+refine", "optimize"])
    parser.add_argument("--model", default=None, help="checkpoint name as the app lists it (default: the app's default)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-download", action="store_true", help="time the response only, without fetching the returned files")
    parser.add_argument("--url", default=None, help="an already running app (default: start app.py here)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)

    proc = None
    url = args.url
    if url is None:
        port = _free_port()
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
        proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}/"
    try:
        load_before = os.getloadavg()[0]
        result = measure(url, args.method, args.model, args.repeats, args.warmup, proc, download=not args.no_download)
        result["load_avg_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(20)
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    fetched = "without fetching the returned files" if args.no_download else "including the download of every returned file"
    print(
        f"/register {args.method} 256x256, {fetched} ({result['app_summary']}): median {result['median_s']:.3f} s, "
        f"p95 {result['p95_s']:.3f} s over {args.repeats} requests (min {result['min_s']:.3f}, max {result['max_s']:.3f}); "
        f"registration alone median {result['registration_median_s']:.3f} s; "
        f"load average {result['load_avg_1min'][0]} -> {result['load_avg_1min'][1]} on {result['machine']}"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
