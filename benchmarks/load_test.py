"""Many users at once: concurrent gradio_client users against the real app process.

Launches `python app.py` (its own process, so its memory is the server's alone), then:

1. users: each of `--clients` clients picks the model, uploads a photo, and does `--rounds`
   rounds of sample grid (/generate) + slider edit (/edit_level_N) + save (/save) +
   download (HTTP GET of the saved PNG and code). Every round is checked: the seed comes
   back, the downloaded code is exactly the one this user's seed and slider values give
   (`LatentCodes.sample` and `chimle.editing.apply_edits`, computed here), and the downloaded PNG
   has the pixels of the image this user's edit returned (for a photo larger than the
   working size, of that code at the photo's own size, computed here too). Another user's
   code or picture would fail the check, so per-user state cannot leak unnoticed.
2. memory: the app's resident memory (/proc/PID/status) after a warm-up user, its peak
   while the users work, and after all users.
3. burst: `--max-queue` + `--burst-extra` grid requests at once; those beyond the queue's
   bound must be refused quickly with Gradio's queue-full error, the rest served, and the
   app must serve again afterwards.

Prints p50/p95 latency per request kind and writes everything to a JSON file.

    python benchmarks/load_test.py                        # the shipped colourization model
    python benchmarks/load_test.py --clients 4 --rounds 2 --checkpoint my.safetensors
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from chimle.checkpoint import CheckpointError, load_codes  # noqa: E402
from chimle.codes import LatentCodes  # noqa: E402
from chimle.editing import LevelEdit, apply_edits  # noqa: E402
from chimle.images import load_rgb, tensor_to_pil  # noqa: E402
from chimle.pipeline import prepare, render_full_size  # noqa: E402
from chimle.studio.models import MODELS, LoadedModel  # noqa: E402

KINDS = ("start", "generate", "edit", "save", "download")
DEFAULT_CHECKPOINT = REPO / "checkpoints" / "colourization-cpu.safetensors"
DEFAULT_IMAGE = REPO / "assets" / "mountain-grey.png"
CONNECT_TIMEOUT = 120.0  # seconds; per HTTP request of gradio_client (results stream without a limit)
SETTLE_SECONDS = 3.0  # before reading memory: the app hands freed memory back once a second


# -- the app process ------------------------------------------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def resident_mb(pid: int) -> float:
    """A process's resident memory (VmRSS) in MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


@dataclass
class AppProcess:
    """`python app.py` running on a local port; `stop()` ends it."""

    process: subprocess.Popen
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_mb(self) -> float:
        return resident_mb(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def launch_app(checkpoint: Path, workdir: Path, max_queue: int, concurrency: int = 2, threads: int = 1,
               timeout: float = 300) -> AppProcess:
    """Start the studio as a user would (`python app.py ...`) with only `checkpoint` to offer.

    Everything the app writes goes under `workdir` (runs, Gradio's file cache, its log).
    """
    checkpoints = workdir / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / checkpoint.name).symlink_to(Path(checkpoint).resolve())
    for folder in ("runs", "data", "gradio"):
        (workdir / folder).mkdir()
    port = _free_port()
    log = workdir / "app.log"
    env = dict(os.environ, OMP_NUM_THREADS=str(max(threads, 1)), GRADIO_TEMP_DIR=str(workdir / "gradio"),
               GRADIO_ANALYTICS_ENABLED="False")
    command = [sys.executable, str(REPO / "app.py"), "--checkpoints", str(checkpoints),
               "--runs", str(workdir / "runs"), "--data-root", str(workdir / "data"),
               "--assets", str(workdir / "no-assets"), "--host", "127.0.0.1", "--port", str(port),
               "--max-queue", str(max_queue), "--concurrency", str(concurrency), "--threads", str(threads)]
    with open(log, "wb") as handle:
        process = subprocess.Popen(command, cwd=workdir, stdout=handle, stderr=subprocess.STDOUT, env=env)
    app = AppProcess(process, f"http://127.0.0.1:{port}/", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with status {process.returncode}:\n{app.log_tail()}")
        try:
            if httpx.get(app.url + "gradio_api/info", timeout=5).status_code == 200:
                return app
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    app.stop()
    raise RuntimeError(f"the app did not answer within {timeout} s:\n{app.log_tail()}")


# -- one user ---------------------------------------------------------------------------------------

@dataclass
class Plan:
    """What every user does: the photo, working size, samples per grid, rounds."""

    image: Path
    max_side: int = 256
    samples: int = 8
    rounds: int = 10


@dataclass
class UserReport:
    user: int
    latencies: dict[str, list[float]] = field(default_factory=lambda: {kind: [] for kind in KINDS})
    errors: list[str] = field(default_factory=list)
    verified_rounds: int = 0


def user_seed(user: int, round_index: int) -> int:
    """The sample seed of a user's round: distinct for every (user, round)."""
    return 1000 * (user + 1) + round_index


def user_edit(user: int, round_index: int) -> LevelEdit:
    """The slider values of a user's round: blends toward seeds of this user's own."""
    return LevelEdit(directions=(0.0, 0.0, 0.0, 0.0), global_seed=7919 * (user + 1) + round_index,
                     global_blend=0.25 + 0.05 * (round_index % 10), local_seed=104729 * (user + 1) + round_index,
                     local_blend=0.5, noise_scale=0.8)


def fetch(url: str, timeout: float = 120) -> bytes:
    """The bytes at `url` (a file the app serves), as a browser's download gets them."""
    response = httpx.get(url, timeout=timeout)
    response.raise_for_status()
    return response.content


def decode_pixels(data: bytes) -> np.ndarray:
    """An image file's bytes as an (H, W, 3) uint8 array."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB")).copy()


def saved_file_urls(downloads: dict) -> dict[str, str]:
    """The URLs of what /save wrote, by suffix: ".png" (the result) and ".safetensors" (its code)."""
    return {Path(item.get("orig_name") or item["path"]).suffix: item["url"] for item in downloads["value"]}


def read_code(data: bytes, fingerprint: str) -> LatentCodes:
    """A downloaded code file's codes; AssertionError if it does not load for the model of `fingerprint`."""
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as handle:
        handle.write(data)
        handle.flush()
        try:
            codes, _ = load_codes(handle.name, fingerprint)
        except CheckpointError as error:
            raise AssertionError(f"the downloaded code does not load: {error}") from None
    return codes


def model_choice(client) -> str:
    """The model the page offers first (the app was given only one)."""
    dropdown, _ = client.predict(api_name="/load_page")
    return dropdown["value"]


def open_client(url: str):
    from gradio_client import Client

    # Files stay on the server until this user asks for them: the download is timed on its own.
    # Connecting fetches the page config (~170 kB) and API info (~370 kB); with 16 users
    # connecting at once on two busy cores that took 7-13 s, past httpx's 5 s default. A
    # browser would wait, so the users do too.
    return Client(url, verbose=False, download_files=False, httpx_kwargs={"timeout": CONNECT_TIMEOUT})


def start_user(client, plan: Plan, seed: int = 0) -> list:
    """Pick the model and upload the photo (the page's first events); the samples are of `seed`."""
    from gradio_client import handle_file

    model = model_choice(client)
    return client.predict(model, handle_file(str(plan.image)), None, plan.max_side, plan.samples, seed, False,
                          api_name="/set_input")


def play_round(client, user: int, round_index: int, plan: Plan, model: LoadedModel, report: UserReport) -> None:
    """One round: grid, edit, save, download; every answer checked against this user's request."""
    seed = user_seed(user, round_index)
    tic = time.perf_counter()
    outputs = client.predict(plan.samples, seed, False, api_name="/generate")
    report.latencies["generate"].append(time.perf_counter() - tic)
    gallery, seed_back = outputs[-2], outputs[-1]
    if int(seed_back) != seed or len(gallery) != plan.samples:
        raise AssertionError(f"grid: asked seed {seed} x{plan.samples}, got seed {seed_back} x{len(gallery)}")

    level = (user + round_index) % model.num_levels
    edit = user_edit(user, round_index)
    values = [*edit.directions, edit.global_seed, edit.global_blend, edit.local_seed, edit.local_blend,
              edit.noise_scale]
    tic = time.perf_counter()
    edited = client.predict(True, *values, api_name=f"/edit_level_{level + 1}")
    report.latencies["edit"].append(time.perf_counter() - tic)
    result_url = edited[0]["url"]

    tic = time.perf_counter()
    downloads, _ = client.predict(api_name="/save")
    report.latencies["save"].append(time.perf_counter() - tic)
    files = saved_file_urls(downloads)
    tic = time.perf_counter()
    png, code = fetch(files[".png"]), fetch(files[".safetensors"])
    report.latencies["download"].append(time.perf_counter() - tic)

    # The code this user asked for: sample 0 of its seed, its level edited with its sliders.
    saved = read_code(code, model.fingerprint)
    base = LatentCodes.sample(saved.shape, plan.samples, torch.Generator().manual_seed(seed))[0]
    expected = apply_edits(base, {level: edit}, model.directions, renormalise=True)
    if not saved.equal(expected):
        raise AssertionError(f"user {user} round {round_index}: the downloaded code is not the one asked for")
    saved_pixels, shown = decode_pixels(png), decode_pixels(fetch(result_url))
    if saved_pixels.shape != shown.shape:  # a photo larger than the working size: Save gives its own size
        shown = full_size_pixels(model, plan, expected)
    if not np.array_equal(saved_pixels, shown):
        raise AssertionError(f"user {user} round {round_index}: the downloaded PNG is not this user's result")
    report.verified_rounds += 1


def full_size_pixels(model: LoadedModel, plan: Plan, codes: LatentCodes) -> np.ndarray:
    """The picture of `codes` at the photo's own size, computed here as the studio's Save makes it."""
    image = load_rgb(plan.image)
    prepared = prepare(model.net, model.task, image, plan.max_side)
    return np.asarray(tensor_to_pil(render_full_size(model.net, model.task, image, prepared, codes)[0]))


def run_user(url: str, user: int, plan: Plan, model: LoadedModel, start: threading.Barrier | None) -> UserReport:
    """One user's whole visit; failures are collected in the report, never raised."""
    report = UserReport(user)
    try:
        client = open_client(url)
    except Exception as error:  # noqa: BLE001 - every failure is a finding to report
        report.errors.append(f"connect: {type(error).__name__}: {error}")
        client = None
    if start is not None:
        start.wait()  # every user passes here, connected or not, so none waits for ever
    if client is None:
        return report
    try:
        tic = time.perf_counter()
        start_user(client, plan)
        report.latencies["start"].append(time.perf_counter() - tic)
    except Exception as error:  # noqa: BLE001
        report.errors.append(f"start: {type(error).__name__}: {error}")
        client.close()
        return report
    for round_index in range(plan.rounds):
        try:
            play_round(client, user, round_index, plan, model, report)
        except Exception as error:  # noqa: BLE001
            report.errors.append(f"round {round_index}: {type(error).__name__}: {error}")
    client.close()
    return report


def run_users(url: str, clients: int, plan: Plan, model: LoadedModel, first_user: int = 0) -> list[UserReport]:
    """`clients` users at once, each on its own thread and its own Gradio session."""
    barrier = threading.Barrier(clients)
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(run_user, url, first_user + index, plan, model, barrier) for index in range(clients)]
        return [future.result() for future in futures]


# -- a burst beyond the queue -----------------------------------------------------------------------

@dataclass
class BurstReport:
    requests: int
    served: int = 0
    busy: int = 0
    other_errors: list[str] = field(default_factory=list)
    busy_messages: list[str] = field(default_factory=list)
    slowest_refusal_seconds: float = 0.0
    seconds: float = 0.0
    served_after: bool = False


def queue_burst(url: str, requests: int, plan: Plan, clients: int = 4, timeout: float = 600) -> BurstReport:
    """`requests` grid requests submitted at once by `clients` users; counts served and refused."""
    from gradio_client.utils import QueueError

    report = BurstReport(requests)
    users = [open_client(url) for _ in range(clients)]
    try:
        for client in users:
            start_user(client, plan)
        began = time.perf_counter()
        jobs = [(time.perf_counter(), users[index % clients].submit(plan.samples, index, False, api_name="/generate"))
                for index in range(requests)]
        finished: dict[int, float] = {}
        deadline = began + timeout
        while len(finished) < len(jobs) and time.perf_counter() < deadline:
            for index, (_, job) in enumerate(jobs):
                if index not in finished and job.done():
                    finished[index] = time.perf_counter()
            time.sleep(0.02)
        report.seconds = time.perf_counter() - began
        for index, (submitted, job) in enumerate(jobs):
            if index not in finished:
                report.other_errors.append(f"request {index}: no answer after {timeout} s")
                continue
            try:
                job.result(timeout=0)
                report.served += 1
            except QueueError as error:
                report.busy += 1
                report.busy_messages.append(str(error))
                report.slowest_refusal_seconds = max(report.slowest_refusal_seconds, finished[index] - submitted)
            except Exception as error:  # noqa: BLE001 - every failure is a finding to report
                report.other_errors.append(f"request {index}: {type(error).__name__}: {error}")
        # Still serving: one more request after the burst.
        users[0].predict(plan.samples, 1, False, api_name="/generate")
        report.served_after = True
    finally:
        for client in users:
            client.close()
    report.busy_messages = sorted(set(report.busy_messages))
    return report


# -- the whole test ---------------------------------------------------------------------------------

class PeakMemory:
    """The highest resident memory of a process while the `with` block runs (sampled every `every` s).

    Every sample is kept too, in `samples` as (time.monotonic(), MB). Sampling stops early
    if the process is gone.
    """

    def __init__(self, pid: int, every: float = 0.5) -> None:
        self.pid, self.every, self.mb = pid, every, 0.0
        self.samples: list[tuple[float, float]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            try:
                mb = resident_mb(self.pid)
            except (OSError, RuntimeError):  # the process has exited (or is a zombie without memory)
                return
            self.samples.append((time.monotonic(), mb))
            self.mb = max(self.mb, mb)
            if self._done.wait(self.every):
                return

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()


def percentile(values: list[float], fraction: float) -> float:
    """The `fraction` quantile (nearest rank), NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def summarise(reports: list, kinds: tuple[str, ...] = KINDS) -> dict:
    """Count, p50, p95, max and mean latency per request kind over the reports' `latencies`."""
    table = {}
    for kind in kinds:
        values = [v for report in reports for v in report.latencies[kind]]
        table[kind] = {"count": len(values), "p50": percentile(values, 0.5), "p95": percentile(values, 0.95),
                       "max": max(values) if values else float("nan"),
                       "mean": statistics.fmean(values) if values else float("nan")}
    return table


def load_test(checkpoint: Path, plan: Plan, clients: int, max_queue: int, burst_extra: int, concurrency: int = 2,
              threads: int = 1, workdir: Path | None = None) -> dict:
    """Launch the app, warm it up, run the users, measure memory, burst the queue; a report dict."""
    model = MODELS.get(checkpoint)
    with tempfile.TemporaryDirectory(prefix="chimle-load-") as scratch:
        app = launch_app(checkpoint, Path(workdir or scratch) / "app", max_queue, concurrency, threads)
        try:
            warm_up = run_user(app.url, clients, Plan(plan.image, plan.max_side, plan.samples, 1), model, None)
            time.sleep(SETTLE_SECONDS)
            rss_before = app.rss_mb()
            with PeakMemory(app.pid) as peak:
                tic = time.perf_counter()
                reports = run_users(app.url, clients, plan, model)
                users_seconds = time.perf_counter() - tic
            time.sleep(SETTLE_SECONDS)
            rss_after = app.rss_mb()
            burst = queue_burst(app.url, max_queue + burst_extra, plan)
            time.sleep(SETTLE_SECONDS)
            rss_after_burst = app.rss_mb()
            alive = app.process.poll() is None
        finally:
            app.stop()
    errors = warm_up.errors + [error for report in reports for error in report.errors]
    return {
        "checkpoint": str(checkpoint), "clients": clients, "rounds": plan.rounds, "samples": plan.samples,
        "max_side": plan.max_side, "image": str(plan.image), "max_queue": max_queue, "concurrency": concurrency,
        "threads": threads, "users_seconds": users_seconds,
        "latency": summarise(reports),
        "errors": errors,
        "verified_rounds": sum(report.verified_rounds for report in reports),
        "expected_rounds": clients * plan.rounds,
        "rss_mb": {"before": rss_before, "peak": peak.mb, "after": rss_after, "after_burst": rss_after_burst,
                   "change": rss_after / rss_before - 1},
        "burst": asdict(burst),
        "app_alive_at_end": alive,
    }


def print_report(report: dict) -> None:
    print(f"{report['clients']} users x {report['rounds']} rounds (grid of {report['samples']}, "
          f"working size {report['max_side']}), app --max-queue {report['max_queue']} "
          f"--concurrency {report['concurrency']} --threads {report['threads']}; {report['users_seconds']:.0f} s")
    print(f"\n{'request':10}{'count':>7}{'p50 s':>9}{'p95 s':>9}{'max s':>9}")
    for kind, row in report["latency"].items():
        print(f"{kind:10}{row['count']:>7}{row['p50']:>9.2f}{row['p95']:>9.2f}{row['max']:>9.2f}")
    rss = report["rss_mb"]
    print(f"\nrounds verified (own code and picture): {report['verified_rounds']} of {report['expected_rounds']}; "
          f"errors: {len(report['errors'])}")
    for error in report["errors"][:10]:
        print(f"  {error}")
    print(f"app memory: {rss['before']:.0f} MB after a warm-up user, {rss['after']:.0f} MB after all users "
          f"({rss['change']:+.1%}; peak {rss['peak']:.0f} MB while they worked), "
          f"{rss['after_burst']:.0f} MB after the burst")
    burst = report["burst"]
    print(f"burst of {burst['requests']} grids at once: {burst['served']} served, {burst['busy']} refused as busy "
          f"(slowest refusal {burst['slowest_refusal_seconds']:.2f} s), {len(burst['other_errors'])} other errors; "
          f"served afterwards: {burst['served_after']}")
    for message in burst["busy_messages"]:
        print(f"  busy message: {message!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--samples", type=int, default=8, help="samples per grid (the page's default: 8)")
    parser.add_argument("--max-side", type=int, default=256, help="working size (the page's default: 256)")
    parser.add_argument("--max-queue", type=int, default=32, help="the app's --max-queue (its default: 32)")
    parser.add_argument("--concurrency", type=int, default=2, help="the app's --concurrency")
    parser.add_argument("--threads", type=int, default=1, help="the app's --threads (torch threads per render)")
    parser.add_argument("--burst-extra", type=int, default=16,
                        help="the burst sends --max-queue plus this many grid requests at once")
    parser.add_argument("--json", type=Path, default=Path(tempfile.gettempdir()) / "chimle-load-test.json",
                        help="where to write the report (default: in the temporary folder)")
    args = parser.parse_args()
    plan = Plan(args.image, args.max_side, args.samples, args.rounds)
    report = load_test(args.checkpoint, plan, args.clients, args.max_queue, args.burst_extra, args.concurrency,
                       args.threads)
    report["command"] = " ".join(["python", *sys.argv])
    print_report(report)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nreport: {args.json}")


if __name__ == "__main__":
    main()
