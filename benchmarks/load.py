"""Bounded load test of the Gradio app on loopback: concurrent API users on mixed endpoints against ``python app.py``.

    python -m benchmarks.load [--users 8] [--duration 60] [--mix register=5,deform=2,...] [--pair examples|flat4096] [--results NAME]

Starts ``python app.py`` on a free port of 127.0.0.1 (``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``)
with a temporary folder of its own (``TMPDIR``, ``GRADIO_TEMP_DIR``), waits until it answers, then
runs ``--users`` threads, each with its own ``gradio_client.Client``, until ``--duration`` seconds
have passed or ``--max-requests`` per user are done. Each request goes to an endpoint drawn from
``--mix`` (weights; seeded per user): ``/register`` with the (source, target) pair of ``--pair``
(the app's first example, or ``flat4096``: a generated 4096² pair of flat blocks, ~40 KB as PNG),
``/deform`` (a new seed each time), ``/walkthrough`` (after a ``/deform`` in the same session),
``/compare`` on the pair, and ``/train`` with ``--train-steps`` steps; every other input keeps its
default. Each request has its own time limit (``--request-timeout``; over it, it is cancelled and
counted as an error). Meanwhile the server's RSS and the size of its temporary folder are sampled
every ``--sample-every`` seconds.

Reported, overall and per endpoint: requests, errors (with their messages), requests/s, latency
p50/p90/p95/p99/max; the server's RSS idle, during warm-up (by default until one request per user
has finished), after it (first, peak, end), its growth after warm-up (% of the first value after
warm-up, at the peak and at the end, and MiB/min), and how much its temporary folder grew. With
``--results NAME`` the figures go to ``benchmarks/results/NAME.json`` and ``NAME.md`` (paths in
them relative to the repository). ``--probe`` first sends bad uploads (empty, not an image,
truncated, a decompression bomb, a 4×4 image) and reports what each got, then checks that the
server still serves.

Only 127.0.0.1 is ever contacted; the server is stopped at the end whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
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
def app_server(port: int, log_path: Path, temp_dir: Path | None = None, start_timeout: float = 240.0) -> Iterator[subprocess.Popen]:
    """Run ``python app.py`` on ``127.0.0.1:port`` until the block ends; yields the process.

    ``temp_dir``: the server's temporary folder (``TMPDIR``, and Gradio's cache ``GRADIO_TEMP_DIR``
    inside it), so that what it writes can be measured.
    """
    env = {**os.environ, "GRADIO_SERVER_NAME": HOST, "GRADIO_SERVER_PORT": str(port)}
    if temp_dir is not None:
        temp_dir.mkdir(parents=True, exist_ok=True)
        env.update({"TMPDIR": str(temp_dir), "GRADIO_TEMP_DIR": str(temp_dir / "gradio")})
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


def folder_mb(folder: Path) -> float:
    """Size in MiB of the files under ``folder`` (0 when it does not exist). Files and folders the
    app deletes while we look (its cleaning) are passed over, never an error."""
    total = 0
    for root, _, names in os.walk(folder, onerror=lambda err: None):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total / 2**20


class Sampler(threading.Thread):
    """Samples a process's RSS and a folder's size every ``every`` seconds: ``samples`` holds
    (seconds since start, RSS MiB, folder MiB)."""

    def __init__(self, pid: int, folder: Path, every: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.folder, self.every = pid, folder, every
        self.samples: list[tuple[float, float, float]] = []
        self.start_time = time.monotonic()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            value = rss_mb(self.pid)
            if value is not None:
                self.samples.append((time.monotonic() - self.start_time, value, folder_mb(self.folder)))
            self._stop_event.wait(self.every)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


@dataclass
class Stats:
    """One user's (or one endpoint's) requests: latencies, when each finished, errors, answers that were not what the endpoint returns."""

    latencies: list[float] = field(default_factory=list)
    finished_at: list[float] = field(default_factory=list)  # seconds since the load started
    errors: list[str] = field(default_factory=list)
    bad_outputs: int = 0


def _is_image_file(path: object) -> bool:
    """Is ``path`` a readable image file?"""
    from PIL import Image

    try:
        with Image.open(str(path)) as img:
            img.load()
            return min(img.size) > 0
    except (OSError, ValueError, TypeError):
        return False


#: ``--mix`` default: the Register tab most, the others as a visitor of the Space would use them.
DEFAULT_MIX = {"register": 5.0, "deform": 2.0, "walkthrough": 1.0, "compare": 1.0, "train": 0.5}
ENDPOINTS = tuple(DEFAULT_MIX)


def parse_mix(text: str) -> dict[str, float]:
    """``"register=5,deform=2"`` (or just ``"register"``) -> endpoint weights."""
    mix = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {name!r}; choose from {', '.join(ENDPOINTS)}")
        mix[name] = float(weight or 1.0)
        if mix[name] < 0:
            raise ValueError(f"the weight of {name} must be >= 0")
    if not mix or sum(mix.values()) <= 0:
        raise ValueError("the mix names no endpoint with a positive weight")
    return mix


class Session:
    """One user's gradio_client session: one request to an endpoint, its answer checked."""

    def __init__(self, client, pair: tuple[Path, Path], train_steps: int, seed: int) -> None:
        self.client, self.pair, self.train_steps = client, pair, train_steps
        self.rng = random.Random(seed)
        self.has_pair = False  # /walkthrough needs a /deform first, in the same session

    def submit(self, endpoint: str):
        from gradio_client import handle_file

        source, target = (handle_file(str(p)) for p in self.pair)
        if endpoint == "register":
            return self.client.submit(source, target, api_name="/register")
        if endpoint == "deform":
            return self.client.submit("camera", 6, 4, self.rng.randrange(100), None, api_name="/deform")
        if endpoint == "walkthrough":
            return self.client.submit(None, api_name="/walkthrough")
        if endpoint == "compare":
            return self.client.submit(source, target, None, api_name="/compare")
        return self.client.submit(self.train_steps, "hybrid", api_name="/train")

    @staticmethod
    def answer_ok(endpoint: str, outputs) -> bool:
        """Did the endpoint return what it returns (an image first, plots, a gallery, a status)?"""
        if endpoint in ("register", "deform"):
            return _is_image_file(outputs[0])
        if endpoint == "walkthrough":
            return len(outputs) == 6 and all(isinstance(o, dict) for o in (*outputs[:3], *outputs[4:]))
        if endpoint == "compare":
            return bool(outputs[0]) and all(_is_image_file(item["image"]) for item in outputs[0])
        return isinstance(outputs[2], str) and "step" in outputs[2]


def _user(
    url: str, pair: tuple[Path, Path], mix: dict[str, float], stop_at: float, max_requests: int, timeout: float, start: float, options: dict
) -> dict[str, Stats]:
    from gradio_client import Client

    stats = {name: Stats() for name in mix}
    first = next(iter(mix))
    try:
        client = Client(url, verbose=False, download_files=str(options["downloads"]), analytics_enabled=False)
    except Exception as err:  # a load test reports every failure rather than dying on the first
        stats[first].errors.append(f"connect: {type(err).__name__}: {err}")
        return stats
    session = Session(client, pair, options["train_steps"], options["seed"])
    names, weights = list(mix), list(mix.values())
    for _ in range(max_requests):
        if time.monotonic() >= stop_at:
            break
        endpoint = session.rng.choices(names, weights)[0]
        if endpoint == "walkthrough" and not session.has_pair:
            endpoint = "deform" if "deform" in mix else endpoint
        t0 = time.monotonic()
        job = session.submit(endpoint)
        try:
            outputs = job.result(timeout=timeout)
        except TimeoutError:
            job.cancel()
            stats[endpoint].errors.append(f"no answer within {timeout:g} s")
            continue
        except Exception as err:
            text = str(err).strip().splitlines()[0] if str(err).strip() else ""
            stats[endpoint].errors.append(f"{type(err).__name__}: {text}")
            continue
        stats[endpoint].latencies.append(time.monotonic() - t0)
        stats[endpoint].finished_at.append(time.monotonic() - start)
        session.has_pair |= endpoint == "deform"
        if not Session.answer_ok(endpoint, outputs):
            stats[endpoint].bad_outputs += 1
    return stats


def flat_blocks_pair(folder: Path, side: int = 4096, block: int = 32) -> tuple[Path, Path]:
    """A ``side``² pair of flat gray blocks (the target shifted by (24, -16) px): ~40 KB as PNG,
    ``side``² pixels once decoded. The shape of a cheap upload that costs the server most."""
    import numpy as np
    from PIL import Image

    blocks = (np.random.default_rng(0).integers(0, 8, (side // block, side // block)) * 32).astype(np.uint8)
    image = np.kron(blocks, np.ones((block, block), np.uint8))
    paths = folder / f"flat{side}_source.png", folder / f"flat{side}_target.png"
    Image.fromarray(image).save(paths[0], optimize=True)
    Image.fromarray(np.roll(image, (24, -16), axis=(0, 1))).save(paths[1], optimize=True)
    return paths


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


def _latency_figures(stats: list[Stats], elapsed: float) -> dict:
    """Requests, errors, requests/s and latency percentiles of some users' (or one endpoint's) requests."""
    latencies = sorted(x for st in stats for x in st.latencies)
    figures = {
        "requests": len(latencies),
        "errors": sum(len(st.errors) for st in stats),
        "bad_outputs": sum(st.bad_outputs for st in stats),
        "requests_per_s": round(len(latencies) / elapsed, 3) if elapsed > 0 else 0.0,
    }
    for q in (50, 90, 95, 99):
        figures[f"latency_p{q}_s"] = round(_percentile(latencies, q), 2)
    figures["latency_max_s"] = round(max(latencies), 2) if latencies else float("nan")
    if len(latencies) <= 20:  # a short run: every request, in the order they finished
        figures["latencies_s"] = [
            round(x, 2) for _, x in sorted((t, x) for st in stats for t, x in zip(st.finished_at, st.latencies, strict=True))
        ]
    return figures


def _relative(path: Path) -> str:
    """``path`` relative to the repository when inside it, else its name (results files name no machine)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return path.name


def run_load(
    users: int = 8,
    duration: float = 60.0,
    pair: tuple[Path, Path] | str = DEFAULT_PAIR,
    max_requests: int = 10_000,
    request_timeout: float = 120.0,
    warmup: float | None = None,
    sample_every: float = 0.5,
    probe_bad: bool = False,
    mix: dict[str, float] | None = None,
    train_steps: int = 50,
) -> dict:
    """Start the app, load it, stop it; return the figures (see the module docstring).

    ``pair``: two image paths, or ``"flat4096"`` for :func:`flat_blocks_pair`'s generated pair.
    """
    mix = dict(mix or {"register": 1.0})
    port = free_port()
    url = f"http://{HOST}:{port}/"
    with tempfile.TemporaryDirectory(prefix="regcore-load-") as tmp:
        tmp_path = Path(tmp)
        if pair == "flat4096":
            pair, pair_name = flat_blocks_pair(tmp_path), "flat4096 (generated: 4096² flat blocks)"
        else:
            pair_name = " + ".join(_relative(p) for p in pair)
        pair_kb = [round(p.stat().st_size / 1024, 1) for p in pair]
        server_tmp = tmp_path / "server-tmp"
        downloads = tmp_path / "downloads"
        downloads.mkdir()
        t_launch = time.monotonic()
        with app_server(port, tmp_path / "app.log", server_tmp) as proc:
            startup_s = time.monotonic() - t_launch
            sampler = Sampler(proc.pid, server_tmp, sample_every)
            sampler.start()
            time.sleep(min(2.0, 4 * sample_every))
            idle_mb = max((v for _, v, _ in sampler.samples), default=float("nan"))
            outcomes = probe(url, pair[1], downloads, request_timeout) if probe_bad else []
            alive_after_probe = proc.poll() is None
            start = time.monotonic()
            load_t0 = start - sampler.start_time
            stop_at = start + duration
            results: list[dict[str, Stats]] = [{} for _ in range(users)]

            def work(i: int) -> None:
                options = {"downloads": downloads, "train_steps": train_steps, "seed": i}
                results[i] = _user(url, pair, mix, stop_at, max_requests, request_timeout, start, options)

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
    by_endpoint = {name: [r[name] for r in results if name in r] for name in mix}
    everything = [st for sts in by_endpoint.values() for st in sts]
    errors = [e for st in everything for e in st.errors] + [f"user thread still running after the time limit ({hung})"] * bool(hung)
    samples = sampler.samples
    load_samples = [(t - load_t0, rss, disk) for t, rss, disk in samples if t >= load_t0]
    if warmup is None:
        # Warm-up ends when as many requests as there are users have finished: by then every
        # worker has run the whole path once (model loaded, plots built, caches filled).
        finished = sorted(t for st in everything for t in st.finished_at)
        warmup = finished[min(users, len(finished)) - 1] if finished else duration
    after = [(t, rss) for t, rss, _ in load_samples if t >= warmup]
    during = [rss for t, rss, _ in load_samples if t < warmup]
    growth = _slope_per_min(after)
    first_after = after[0][1] if after else None
    disk = [d for _, _, d in samples]

    def percent(value: float | None) -> float | None:
        return None if value is None or not first_after else round(100.0 * (value - first_after) / first_after, 1)

    overall = _latency_figures(everything, elapsed)
    overall["errors"] += bool(hung) * hung
    return {
        "users": users,
        "duration_s": duration,
        "mix": mix,
        "pair": pair_name,
        "pair_kb": pair_kb,
        "elapsed_s": round(elapsed, 1),
        "startup_s": round(startup_s, 1),
        **overall,
        "error_messages": sorted(set(errors))[:10],
        "endpoints": {name: _latency_figures(sts, elapsed) for name, sts in by_endpoint.items()},
        "rss_idle_mb": round(idle_mb, 1),
        "warmup_s": round(warmup, 1),
        "rss_peak_warmup_mb": round(max(during), 1) if during else None,
        "rss_first_after_warmup_mb": None if first_after is None else round(first_after, 1),
        "rss_peak_after_warmup_mb": round(max(v for _, v in after), 1) if after else None,
        "rss_end_mb": round(load_samples[-1][1], 1) if load_samples else None,
        "rss_growth_after_warmup_peak_percent": percent(max(v for _, v in after)) if after else None,
        "rss_growth_after_warmup_end_percent": percent(after[-1][1]) if after else None,
        "rss_growth_after_warmup_mb_per_min": None if growth is None else round(growth, 1),
        "rss_peak_mb": round(max(v for _, v, _ in samples), 1) if samples else None,
        "rss_timeline_mb": [(round(t, 1), round(v)) for t, v, _ in load_samples[:: max(1, len(load_samples) // 24)]],
        "temp_start_mb": round(disk[0], 1) if disk else None,
        "temp_peak_mb": round(max(disk), 1) if disk else None,
        "temp_end_mb": round(disk[-1], 1) if disk else None,
        "temp_growth_mb": round(disk[-1] - disk[0], 1) if disk else None,
        "load_average_1min": [round(v, 2) for v in os.getloadavg()],
        "probe": outcomes,
        # Served requests after the probe show that the bad uploads left the server working.
        "still_serving_after_probe": (alive_after_probe and overall["requests"] > 0) if probe_bad else None,
        "server_alive_at_end": server_alive,
    }


def _lines(report: dict) -> list[str]:
    """The report as the lines ``main`` prints (and the results file keeps)."""
    r = report
    mix = ", ".join(f"{name} {weight:g}" for name, weight in r["mix"].items())
    lines = [
        f"{r['users']} users for {r['duration_s']:g} s on {mix} (ran {r['elapsed_s']} s; app start-up {r['startup_s']} s), "
        f"loopback {HOST}; pair {r['pair']} ({' + '.join(f'{kb:g} KB' for kb in r['pair_kb'])})",
    ]
    lines += [f"  bad upload {name!r}: {outcome}" for name, outcome in r["probe"]]
    if r["probe"]:
        lines.append(f"  still serving after the bad uploads: {r['still_serving_after_probe']}")
    lines.append("endpoint     requests  errors  bad  req/s   p50 s   p90 s   p95 s   p99 s   max s")
    for name, e in [*r["endpoints"].items(), ("all", r)]:
        lines.append(
            f"{name:12} {e['requests']:8} {e['errors']:7} {e['bad_outputs']:4} {e['requests_per_s']:6.3f} "
            + " ".join(f"{e[k]:7}" for k in ("latency_p50_s", "latency_p90_s", "latency_p95_s", "latency_p99_s", "latency_max_s"))
        )
    lines += [f"  {name} requests in order (s): {e['latencies_s']}" for name, e in r["endpoints"].items() if "latencies_s" in e]
    lines += [f"  error: {message}" for message in r["error_messages"]]
    lines.append(
        f"server RSS MiB: idle {r['rss_idle_mb']}, peak during warm-up (first {r['warmup_s']} s) {r['rss_peak_warmup_mb']}, "
        f"first after warm-up {r['rss_first_after_warmup_mb']}, peak after warm-up {r['rss_peak_after_warmup_mb']} "
        f"({r['rss_growth_after_warmup_peak_percent']:+}%), end {r['rss_end_mb']} ({r['rss_growth_after_warmup_end_percent']:+}%), "
        f"trend after warm-up {r['rss_growth_after_warmup_mb_per_min']} MiB/min, overall peak {r['rss_peak_mb']}"
        if r["rss_first_after_warmup_mb"] is not None
        else f"server RSS MiB: idle {r['rss_idle_mb']}, overall peak {r['rss_peak_mb']} (no sample after warm-up)"
    )
    lines.append("RSS over time (s: MiB): " + ", ".join(f"{t:g}: {v}" for t, v in r["rss_timeline_mb"]))
    lines.append(
        f"server temporary folder MiB: {r['temp_start_mb']} at the start, peak {r['temp_peak_mb']}, end {r['temp_end_mb']} "
        f"(grew {r['temp_growth_mb']}); 1-minute load average at the end {r['load_average_1min'][0]}"
    )
    return lines


def write_results(report: dict, name: str, command: str) -> tuple[Path, Path]:
    """``benchmarks/results/NAME.json`` (every figure) and ``NAME.md`` (the command and the printed report)."""
    folder = ROOT / "benchmarks" / "results"
    folder.mkdir(parents=True, exist_ok=True)
    json_path, md_path = folder / f"{name}.json", folder / f"{name}.md"
    json_path.write_text(json.dumps({"command": command, **report}, indent=1) + "\n")
    text = [
        f"# Load test: {name}",
        "",
        f"Written by `python -m benchmarks.load` (`benchmarks/load.py`); every figure is in [`{json_path.name}`]({json_path.name}).",
        "",
        "```",
        command,
        "```",
        "",
        "```",
        *_lines(report),
        "```",
        "",
    ]
    md_path.write_text("\n".join(text))
    return json_path, md_path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=8, help="concurrent API clients (default 8)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    p.add_argument("--mix", default="register", help=f"endpoint weights, e.g. {','.join(f'{k}={v:g}' for k, v in DEFAULT_MIX.items())}")
    p.add_argument("--max-requests", type=int, default=10_000, help="at most this many requests per user")
    p.add_argument("--request-timeout", type=float, default=120.0, help="a request is cancelled after this many seconds")
    p.add_argument(
        "--warmup", type=float, default=None, help="seconds of load counted as warm-up (default: until one request per user has finished)"
    )
    p.add_argument("--sample-every", type=float, default=0.5, help="RSS and temporary-folder sampling period, seconds")
    p.add_argument("--pair", default="examples", help="'examples' (examples/camera_*.png), 'flat4096' (generated), or SOURCE,TARGET")
    p.add_argument("--train-steps", type=int, default=50, help="steps of each /train request")
    p.add_argument("--probe", action="store_true", help="first send bad uploads and report what each got")
    p.add_argument("--results", default=None, metavar="NAME", help="write benchmarks/results/NAME.json and NAME.md")
    args = p.parse_args(argv)
    if args.users < 1 or args.duration <= 0 or args.max_requests < 1:
        p.error("--users, --duration and --max-requests must be positive")
    try:
        mix = parse_mix(args.mix)
    except ValueError as err:
        p.error(str(err))
    pair = {"examples": DEFAULT_PAIR, "flat4096": "flat4096"}.get(args.pair) or tuple(Path(x) for x in args.pair.split(","))
    report = run_load(
        args.users,
        args.duration,
        pair,
        max_requests=args.max_requests,
        request_timeout=args.request_timeout,
        warmup=args.warmup,
        sample_every=args.sample_every,
        probe_bad=args.probe,
        mix=mix,
        train_steps=args.train_steps,
    )
    print("\n".join(_lines(report)))
    if args.results:
        command = "python -m benchmarks.load " + " ".join(argv if argv is not None else sys.argv[1:])
        for path in write_results(report, args.results, command):
            print(f"wrote {_relative(path)}")
    sys.exit(0 if report["errors"] == 0 and report["bad_outputs"] == 0 else 1)


if __name__ == "__main__":
    main()
