"""Bounded load test of the Gradio app on loopback: concurrent API users against ``python app.py``.

    nice -n 10 python -m benchmarks.load [--users 8] [--duration 60] [--probe] [--json out.json]

Starts ``python app.py`` on a free port of 127.0.0.1 (``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``),
waits until it answers, then runs ``--users`` threads, each with its own ``gradio_client.Client``,
calling ``/register`` with a (source, target) pair of image files (the app's first example by
default; every other input keeps its default) until ``--duration`` seconds have passed or
``--max-requests`` per user are done. Each request has its own time limit (``--request-timeout``;
a request over it is cancelled and counted as an error). Meanwhile the server process's RSS is
sampled every ``--sample-every`` seconds. Reported: requests served, errors (with their
messages), p50/p95/max latency, throughput, and the server's RSS before the load, during and
after the warm-up (by default until one request per user has finished), at its peak, at the
end, and its growth after the warm-up in MiB/min (target: zero errors and memory flat after warm-up).
``--probe`` first sends bad uploads (empty, not an image, truncated, a decompression bomb, a
4×4 image) and reports what each got, then checks that the server still serves.

Only 127.0.0.1 is ever contacted; the server is stopped at the end whatever happens.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"  # loopback only, by design
DEFAULT_PAIR = (ROOT / "examples" / "camera_source.png", ROOT / "examples" / "camera_target.png")


def free_port() -> int:
    """A TCP port nobody listens on at the moment, on the loopback interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float | None:
    """Resident memory of process ``pid`` in MiB (psutil if installed, else /proc), None if gone."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        pass
    except Exception:  # psutil.NoSuchProcess and friends: the process has exited
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@contextmanager
def app_server(port: int, log_path: Path, start_timeout: float = 240.0) -> Iterator[subprocess.Popen]:
    """Run ``python app.py`` on ``127.0.0.1:port`` until the block ends; yields the process."""
    env = {**os.environ, "GRADIO_SERVER_NAME": HOST, "GRADIO_SERVER_PORT": str(port)}
    env.update({"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    with open(log_path, "wb") as log:
        # A session of its own, so that stopping it stops any child it started too.
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
                raise RuntimeError(f"app.py exited with status {proc.returncode} before serving: {' | '.join(tail)}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}/", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"app.py did not answer on {HOST}:{port} within {start_timeout:.0f} s")
            time.sleep(0.5)
        yield proc
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, PermissionError):
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


class MemorySampler(threading.Thread):
    """Samples a process's RSS every ``every`` seconds into ``samples`` as (seconds since start, MiB)."""

    def __init__(self, pid: int, every: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.samples: list[tuple[float, float]] = []
        self.start_time = time.monotonic()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            value = rss_mb(self.pid)
            if value is not None:
                self.samples.append((time.monotonic() - self.start_time, value))
            self._stop_event.wait(self.every)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


@dataclass
class UserStats:
    latencies: list[float] = field(default_factory=list)
    finished_at: list[float] = field(default_factory=list)  # seconds since the load started
    errors: list[str] = field(default_factory=list)
    bad_outputs: int = 0


def _is_image_file(path: object) -> bool:
    """Did the request return a readable image as its first output?"""
    from PIL import Image

    try:
        with Image.open(str(path)) as img:
            img.load()
            return min(img.size) > 0
    except (OSError, ValueError, TypeError):
        return False


def _user(url: str, pair: tuple[Path, Path], stop_at: float, max_requests: int, timeout: float, start: float, downloads: Path) -> UserStats:
    from gradio_client import Client, handle_file

    stats = UserStats()
    try:
        client = Client(url, verbose=False, download_files=str(downloads), analytics_enabled=False)
    except Exception as err:  # a load test reports every failure rather than dying on the first
        stats.errors.append(f"connect: {type(err).__name__}: {err}")
        return stats
    for _ in range(max_requests):
        if time.monotonic() >= stop_at:
            break
        t0 = time.monotonic()
        job = client.submit(handle_file(str(pair[0])), handle_file(str(pair[1])), api_name="/register")
        try:
            outputs = job.result(timeout=timeout)
        except TimeoutError:
            job.cancel()
            stats.errors.append(f"no answer within {timeout:g} s")
            continue
        except Exception as err:
            stats.errors.append(f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}")
            continue
        stats.latencies.append(time.monotonic() - t0)
        stats.finished_at.append(time.monotonic() - start)
        first = outputs[0] if isinstance(outputs, (list, tuple)) and outputs else outputs
        if not _is_image_file(first):
            stats.bad_outputs += 1
    return stats


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares ``width x height`` pixels: the shape of a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def bad_uploads(folder: Path, good: Path) -> dict[str, Path]:
    """Files a careless or hostile user might upload, written into ``folder``."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (4, 4), 128).save(buffer, format="PNG")
    cases = {
        "empty file": b"",
        "text named .png": b"this is not an image\n",
        "truncated PNG": good.read_bytes()[: good.stat().st_size // 2],
        "bomb (100000x100000 header)": _png_header_only(100_000, 100_000),
        "over the pixel limit (5000x5000 header)": _png_header_only(5000, 5000),
        "4x4 image": buffer.getvalue(),
    }
    paths = {}
    for i, (name, data) in enumerate(cases.items()):
        paths[name] = folder / f"bad{i}.png"
        paths[name].write_bytes(data)
    return paths


def probe(url: str, good: Path, folder: Path, timeout: float) -> list[tuple[str, str]]:
    """Send each bad upload as the source (with a good target); what did each get?"""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=str(folder), analytics_enabled=False)
    outcomes = []
    for name, path in bad_uploads(folder, good).items():
        job = client.submit(handle_file(str(path)), handle_file(str(good)), api_name="/register")
        try:
            job.result(timeout=timeout)
            outcomes.append((name, "accepted (no error)"))
        except TimeoutError:
            job.cancel()
            outcomes.append((name, f"no answer within {timeout:g} s"))
        except Exception as err:
            text = str(err).strip().splitlines()[0] if str(err).strip() else ""
            outcomes.append((name, f"{type(err).__name__}: {text}"))
    return outcomes


def _slope_per_min(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute (None with under 2 points)."""
    if len(points) < 2 or points[-1][0] - points[0][0] <= 0:
        return None
    t_mean = statistics.fmean(t for t, _ in points)
    v_mean = statistics.fmean(v for _, v in points)
    cov = sum((t - t_mean) * (v - v_mean) for t, v in points)
    var = sum((t - t_mean) ** 2 for t, _ in points)
    return 60.0 * cov / var


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def run_load(
    users: int = 8,
    duration: float = 60.0,
    pair: tuple[Path, Path] = DEFAULT_PAIR,
    max_requests: int = 10_000,
    request_timeout: float = 120.0,
    warmup: float | None = None,
    sample_every: float = 0.5,
    probe_bad: bool = False,
) -> dict:
    """Start the app, load it, stop it; return the figures (see the module docstring)."""
    port = free_port()
    url = f"http://{HOST}:{port}/"
    with tempfile.TemporaryDirectory(prefix="regcore-load-") as tmp:
        tmp_path = Path(tmp)
        t_launch = time.monotonic()
        with app_server(port, tmp_path / "app.log") as proc:
            startup_s = time.monotonic() - t_launch
            sampler = MemorySampler(proc.pid, sample_every)
            sampler.start()
            time.sleep(min(2.0, 4 * sample_every))
            idle_mb = max((v for _, v in sampler.samples), default=float("nan"))
            outcomes = probe(url, pair[1], tmp_path, request_timeout) if probe_bad else []
            alive_after_probe = proc.poll() is None
            start = time.monotonic()
            load_t0 = start - sampler.start_time
            stop_at = start + duration
            results: list[UserStats] = [UserStats() for _ in range(users)]

            def work(i: int) -> None:
                results[i] = _user(url, pair, stop_at, max_requests, request_timeout, start, tmp_path)

            threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(users)]
            for t in threads:
                t.start()
            for t in threads:
                # Bounded: each user stops at stop_at; a request in flight then has request_timeout left.
                t.join(timeout=duration + request_timeout + 60)
            elapsed = time.monotonic() - start
            hung = sum(t.is_alive() for t in threads)
            sampler.stop()
            server_alive = proc.poll() is None
    latencies = sorted(x for r in results for x in r.latencies)
    errors = [e for r in results for e in r.errors] + [f"user thread still running after the time limit ({hung})"] * bool(hung)
    samples = sampler.samples
    load_samples = [(t - load_t0, v) for t, v in samples if t >= load_t0]
    if warmup is None:
        # Warm-up ends when as many requests as there are users have finished: by then every
        # worker has run the whole path once (model loaded, plots built, caches filled).
        finished = sorted(t for r in results for t in r.finished_at)
        warmup = finished[min(users, len(finished)) - 1] if finished else duration
    after_warmup = [v for t, v in load_samples if t >= warmup]
    warm_samples = [v for t, v in load_samples if t < warmup]
    growth = _slope_per_min([(t, v) for t, v in load_samples if t >= warmup])
    return {
        "users": users,
        "duration_s": duration,
        "elapsed_s": round(elapsed, 1),
        "startup_s": round(startup_s, 1),
        "requests": len(latencies),
        "errors": len(errors),
        "error_messages": sorted(set(errors))[:10],
        "bad_outputs": sum(r.bad_outputs for r in results),
        "throughput_per_min": round(60 * len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_p50_s": round(_percentile(latencies, 50), 2),
        "latency_p95_s": round(_percentile(latencies, 95), 2),
        "latency_max_s": round(max(latencies), 2) if latencies else float("nan"),
        "rss_idle_mb": round(idle_mb, 1),
        "rss_peak_warmup_mb": round(max(warm_samples), 1) if warm_samples else None,
        "rss_peak_after_warmup_mb": round(max(after_warmup), 1) if after_warmup else None,
        "rss_first_after_warmup_mb": round(after_warmup[0], 1) if after_warmup else None,
        "rss_end_mb": round(load_samples[-1][1], 1) if load_samples else None,
        "warmup_s": round(warmup, 1),
        "rss_growth_after_warmup_mb_per_min": None if growth is None else round(growth, 1),
        "rss_peak_mb": round(max(v for _, v in samples), 1) if samples else None,
        "rss_timeline_mb": [(round(t, 1), round(v)) for t, v in load_samples[:: max(1, len(load_samples) // 24)]],
        "probe": outcomes,
        # Served requests after the probe show that the bad uploads left the server working.
        "still_serving_after_probe": (alive_after_probe and bool(latencies)) if probe_bad else None,
        "server_alive_at_end": server_alive,
    }


def _print(report: dict) -> None:
    r = report
    print(f"{r['users']} users for {r['duration_s']:g} s (ran {r['elapsed_s']} s; app start-up {r['startup_s']} s), loopback {HOST}")
    for name, outcome in r["probe"]:
        print(f"  bad upload {name!r}: {outcome}")
    if r["probe"]:
        print(f"  still serving after the bad uploads: {r['still_serving_after_probe']}")
    print(f"requests served {r['requests']}, errors {r['errors']}, first output not an image {r['bad_outputs']}")
    for message in r["error_messages"]:
        print(f"  error: {message}")
    latency = f"latency p50 {r['latency_p50_s']} s, p95 {r['latency_p95_s']} s, max {r['latency_max_s']} s"
    print(f"{latency}; {r['throughput_per_min']} requests/min")
    print(
        f"server RSS MiB: idle {r['rss_idle_mb']}, peak during warm-up (first {r['warmup_s']} s) {r['rss_peak_warmup_mb']}, "
        f"first after warm-up {r['rss_first_after_warmup_mb']}, peak after warm-up {r['rss_peak_after_warmup_mb']}, "
        f"growth after warm-up {r['rss_growth_after_warmup_mb_per_min']} MiB/min, "
        f"end {r['rss_end_mb']}, overall peak {r['rss_peak_mb']}"
    )
    print("RSS over time (s: MiB): " + ", ".join(f"{t:g}: {v}" for t, v in r["rss_timeline_mb"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=8, help="concurrent API clients (default 8)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    p.add_argument("--max-requests", type=int, default=10_000, help="at most this many requests per user")
    p.add_argument("--request-timeout", type=float, default=120.0, help="a request is cancelled after this many seconds")
    p.add_argument(
        "--warmup", type=float, default=None, help="seconds of load counted as warm-up (default: until one request per user has finished)"
    )
    p.add_argument("--sample-every", type=float, default=0.5, help="RSS sampling period, seconds")
    p.add_argument("--source", type=Path, default=DEFAULT_PAIR[0])
    p.add_argument("--target", type=Path, default=DEFAULT_PAIR[1])
    p.add_argument("--probe", action="store_true", help="first send bad uploads and report what each got")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args()
    if args.users < 1 or args.duration <= 0 or args.max_requests < 1:
        p.error("--users, --duration and --max-requests must be positive")
    report = run_load(
        args.users,
        args.duration,
        (args.source, args.target),
        args.max_requests,
        args.request_timeout,
        args.warmup,
        args.sample_every,
        args.probe,
    )
    _print(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    sys.exit(0 if report["errors"] == 0 and report["bad_outputs"] == 0 else 1)


if __name__ == "__main__":
    main()
