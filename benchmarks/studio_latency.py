"""How long the studio makes a user wait: the sample grid, and an edit of each level.

Two views of the same operations: the library (`StudioSession`, no web server) and the app
over HTTP (`app.build_demo` launched on a free port; the time from the request a slider
release sends to each response carrying a new image, read from Gradio's event stream as it
arrives, then the download of that image, which the page does next). The app runs with Gradio's own
profiler on (`GRADIO_PROFILING=1`), which splits each request's time on the server into
queue wait, preprocessing, the handler, postprocessing and streaming diffs; the rest of what
the client waits for is HTTP and the event stream.

    python benchmarks/studio_latency.py --checkpoint checkpoints/colourization-cpu.safetensors \
        --image assets/dogs-grey.png --max-side 256 --edits 30
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# Read by Gradio when it is imported: set before anything imports it.
os.environ.setdefault("GRADIO_PROFILING", "1")
PHASES = ("queue_wait", "preprocess", "fn_call", "postprocess", "streaming_diff", "total")

from chimle.editing import LevelEdit  # noqa: E402
from chimle.images import load_rgb  # noqa: E402
from chimle.studio.models import MODELS  # noqa: E402
from chimle.studio.render_thread import RENDERS  # noqa: E402
from chimle.studio.session import StudioSession  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _edit_values(index: int) -> list[float]:
    """Slider values for the index-th edit: a global direction and a local blend that change each time."""
    # Kept inside the sliders' ranges (directions -3..3, blends 0..1) however many edits run.
    return [-3 + 0.3 * (index % 21), 0, 0, 0, 0, 0, 7, 0.05 * (index % 20 + 1), 1.0]


def library_timings(checkpoint: Path, image: Path, max_side: int, samples: int, edits: int) -> dict:
    model = MODELS.get(checkpoint)
    session = StudioSession()
    session.set_input(model, load_rgb(image), max_side)
    session.draw_samples(model, samples, seed=0)  # warm-up (first call allocates)
    tic = time.perf_counter()
    session.draw_samples(model, samples, seed=1)
    grid = time.perf_counter() - tic
    per_level = {}
    for level in range(model.num_levels):
        model.directions(level)  # computed once per model, on first use
        times = []
        for index in range(edits):
            values = _edit_values(index)
            edit = LevelEdit(tuple(values[:4]), int(values[4]), values[5], int(values[6]), values[7], values[8])
            times.append(session.edit_level(model, level, edit).seconds)
        per_level[level] = times
    return {"size": session.result_image().size, "grid": grid, "per_level": per_level}


def _rss_mb() -> float:
    """This process's resident memory now (the app's server runs in this process)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def app_timings(checkpoint: Path, image: Path, max_side: int, samples: int, edits: int) -> dict:
    import app
    from gradio_client import Client, handle_file

    from chimle.studio.handlers import StudioSettings
    from chimle.studio.security import TrainingPolicy

    with tempfile.TemporaryDirectory() as folder:
        checkpoints = Path(folder) / "checkpoints"
        checkpoints.mkdir()
        (checkpoints / f"{checkpoint.parent.parent.name or 'model'}.safetensors").symlink_to(checkpoint.resolve())
        settings = StudioSettings(checkpoints=checkpoints, runs=Path(folder) / "runs", data_root=Path(folder),
                                  assets=Path(folder), policy=TrainingPolicy(False, "benchmark"))
        demo = app.build_demo(settings)
        port = _free_port()
        demo.launch(prevent_thread_lock=True, server_port=port, quiet=True, **app.launch_options(settings))
        try:
            # gradio_client uploads the photo and opens the session; the timed requests then go
            # straight over HTTP in that session, as the page's do (the client's own thread and
            # polling add about 0.1 s a request, which no browser pays).
            client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
            model_path = str(next(checkpoints.iterdir()))
            client.predict(model_path, handle_file(str(image)), None, max_side, samples, 0, False,
                           api_name="/set_input")
            call = functools.partial(_timed_call, f"http://127.0.0.1:{port}/gradio_api", client.session_hash)
            grid = call("generate", [samples, 1, False])[0][-1]
            per_level, first_image, fetch, rss_after_first = {}, {}, [], None
            for level in range(MODELS.get(model_path).num_levels):
                first_image[level], per_level[level] = [], []
                for index in range(edits):
                    # A slow edit streams its coarse level first: the time to each response.
                    arrivals, outputs = call(f"edit_level_{level + 1}", [True, *_edit_values(index)])
                    first_image[level].append(arrivals[0])
                    per_level[level].append(arrivals[-1])
                    result = next(value for value in outputs if isinstance(value, dict) and "url" in value)
                    fetch.append(_fetch_seconds(result["url"]))  # what the page then downloads
                    rss_after_first = rss_after_first or _rss_mb()
            rss_after_all = _rss_mb()
            server = _server_phases(f"http://127.0.0.1:{port}/gradio_api")
            # A long job (Save renders at the photo's own size) must not slow the edits after it
            # (chimle/studio/render_thread.py: a second OpenMP team slows every render while it lives).
            client.predict(api_name="/save")
            after_save = [call("edit_level_1", [True, *_edit_values(index)])[0][-1] for index in range(edits)]
        finally:
            demo.close()
    return {"grid": grid, "per_level": per_level, "first_image": first_image, "fetch": fetch,
            "rss_after_first": rss_after_first, "rss_after_all": rss_after_all, "server": server,
            "after_save": after_save}


def _server_phases(api: str) -> dict[str, dict[str, list[float]]]:
    """Gradio's profiler's record of each request, by endpoint: the milliseconds of each of
    `PHASES` (a streaming handler's are summed over its responses). Empty when Gradio was
    imported before `GRADIO_PROFILING` was set (its profiler is then off)."""
    try:
        with urllib.request.urlopen(f"{api}/profiling/traces") as response:
            traces = json.load(response)
    except urllib.error.HTTPError:
        return {}
    phases: dict[str, dict[str, list[float]]] = {}
    for trace in traces:
        endpoint = phases.setdefault(trace["fn_name"], {phase: [] for phase in PHASES})
        for phase in PHASES:
            endpoint[phase].append(trace[f"{phase}_ms"])
    return phases


def _timed_call(api: str, session: str, name: str, data: list) -> tuple[list[float], list]:
    """Call endpoint `name` in `session` over Gradio's HTTP API, reading its event stream as it
    comes: the seconds from the request to each response, and the last response's outputs."""
    tic = time.perf_counter()
    request = urllib.request.Request(f"{api}/call/{name}", data=json.dumps({"data": data, "session_hash": session}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        event_id = json.load(response)["event_id"]
    arrivals, outputs, event = [], None, None
    with urllib.request.urlopen(f"{api}/call/{name}/{event_id}") as stream:
        for line in stream:
            line = line.decode().strip()
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("generating", "complete"):
                outputs = json.loads(line.split(":", 1)[1])
                # A generator's last yield comes twice, as "generating" and as "complete".
                if event == "generating" or not arrivals:
                    arrivals.append(time.perf_counter() - tic)
            elif line.startswith("data:") and event == "error":
                raise RuntimeError(f"{name} failed: {line}")
    return arrivals, outputs


def _fetch_seconds(url: str) -> float:
    """The time to download one result image from the app, as the page does after a response."""
    tic = time.perf_counter()
    with urllib.request.urlopen(url) as response:
        response.read()
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--max-side", type=int, default=256)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--edits", type=int, default=3, help="edits timed per level")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--no-app", action="store_true", help="library timings only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    # On the studio's render thread, as the app renders: a render on any other thread (this
    # process's main one) would give the process a second OpenMP team, and from then on every
    # render, the app's too, takes about 1.8 times as long (libgomp stops spinning between ops
    # once a process has more OpenMP threads than cores; measured 102 -> 182 ms per level-1
    # edit, /tmp script, 2026-12-02).
    library = RENDERS.run(library_timings, args.checkpoint, args.image, args.max_side, args.samples, args.edits)
    width, height = library["size"]
    print(f"model {args.checkpoint}, result {width}x{height}, torch threads {torch.get_num_threads()}")
    rows = [("library", library)]
    if not args.no_app:
        rows.append(("app over HTTP", app_timings(args.checkpoint, args.image, args.max_side, args.samples,
                                                  args.edits)))
    if not args.no_app:
        app_rows = rows.pop()[1]
        rows += [("app, first image", {**app_rows, "per_level": app_rows["first_image"]}),
                 ("app, final image", app_rows)]
    print(f"\n{'':18}{'grid of ' + str(args.samples):>14}" + "".join(
        f"{'edit level ' + str(level + 1):>22}" for level in library["per_level"]))
    for name, timing in rows:
        cells = "".join(f"{statistics.median(times):>9.3f} s (max {max(times):.2f})"
                        for times in timing["per_level"].values())
        grid = f"{timing['grid']:>12.2f} s" if name != "app, first image" else f"{'':14}"
        print(f"{name:18}{grid}{cells}")
    print(f"\nmedian of {args.edits} edits per level; an edit of level l re-renders levels l..L only;")
    print("where the last full render took over 0.1 s, an edit of a level with finer ones streams its")
    print("coarse result first (first image), then the result (final image)")
    if not args.no_app:
        total = args.edits * len(app_rows["per_level"])
        print(f"fetching the result image from the app: median {statistics.median(app_rows['fetch']) * 1000:.1f} ms")
        print(f"edit level 1 after a Save (final image): median {statistics.median(app_rows['after_save']):.3f} s "
              f"(max {max(app_rows['after_save']):.2f}), against {statistics.median(app_rows['per_level'][0]):.3f} s "
              f"before it")
        print(f"app process memory: {app_rows['rss_after_first']:.0f} MB after the first edit, "
              f"{app_rows['rss_after_all']:.0f} MB after {total} edits")
        print_server_phases(app_rows)


def print_server_phases(app_rows: dict) -> None:
    """Where the app's time goes: Gradio's phases of each request on the server, and what is
    left of the client's wait for the final image (HTTP, the event stream, the client)."""
    server = app_rows["server"]
    if not server:
        print("\nGradio's profiler was off (GRADIO_PROFILING was not set before gradio was imported)")
        return
    print(f"\non the server, median ms per request (Gradio's profiler; a streaming edit's phases summed "
          f"over its responses):\n{'':18}" + "".join(f"{phase:>15}" for phase in PHASES) + f"{'HTTP and client':>17}")
    endpoints = [("generate", app_rows["grid"])] + [
        (f"edit_level_{level + 1}", statistics.median(times)) for level, times in app_rows["per_level"].items()]
    for endpoint, client_seconds in endpoints:
        if endpoint not in server:
            continue
        medians = {phase: statistics.median(values) for phase, values in server[endpoint].items()}
        cells = "".join(f"{medians[phase]:>15.1f}" for phase in PHASES)
        print(f"{endpoint:18}{cells}{client_seconds * 1000 - medians['total']:>17.1f}")


if __name__ == "__main__":
    main()
