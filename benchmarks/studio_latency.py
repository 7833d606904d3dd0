"""How long the studio makes a user wait: the sample grid, and an edit of each level.

Two views of the same operations: the library (`StudioSession`, no web server) and the app
over HTTP (`app.build_demo` launched on a free port, driven by gradio_client; the time from
the request a slider release sends to the response carrying the new image).

    python benchmarks/studio_latency.py --checkpoint runs/colour-cpu/checkpoints/latest.safetensors \
        --image data/demo/held_out/skimage__chelsea.png --max-side 256
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chimle.editing import LevelEdit  # noqa: E402
from chimle.images import load_rgb  # noqa: E402
from chimle.studio.models import MODELS  # noqa: E402
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
            # The browser fetches the new images itself; the client need not download them.
            client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False)
            model_path = str(next(checkpoints.iterdir()))
            client.predict(model_path, handle_file(str(image)), None, max_side, samples, 0, False,
                           api_name="/set_input")
            tic = time.perf_counter()
            client.predict(samples, 1, False, api_name="/generate")
            grid = time.perf_counter() - tic
            per_level, rss_after_first = {}, None
            for level in range(MODELS.get(model_path).num_levels):
                times = []
                for index in range(edits):
                    tic = time.perf_counter()
                    client.predict(True, *_edit_values(index), api_name=f"/edit_level_{level + 1}")
                    times.append(time.perf_counter() - tic)
                    rss_after_first = rss_after_first or _rss_mb()
                per_level[level] = times
            rss_after_all = _rss_mb()
        finally:
            demo.close()
    return {"grid": grid, "per_level": per_level, "rss_after_first": rss_after_first, "rss_after_all": rss_after_all}


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

    library = library_timings(args.checkpoint, args.image, args.max_side, args.samples, args.edits)
    width, height = library["size"]
    print(f"model {args.checkpoint}, result {width}x{height}, torch threads {torch.get_num_threads()}")
    rows = [("library", library)]
    if not args.no_app:
        rows.append(("app over HTTP", app_timings(args.checkpoint, args.image, args.max_side, args.samples,
                                                  args.edits)))
    print(f"\n{'':16}{'grid of ' + str(args.samples):>14}" + "".join(
        f"{'edit level ' + str(level + 1):>22}" for level in library["per_level"]))
    for name, timing in rows:
        cells = "".join(f"{statistics.median(times):>9.3f} s (max {max(times):.2f})"
                        for times in timing["per_level"].values())
        print(f"{name:16}{timing['grid']:>12.2f} s{cells}")
    print(f"\nmedian of {args.edits} edits per level; an edit of level l re-renders levels l..L only")
    if not args.no_app:
        app_rows = rows[1][1]
        total = args.edits * len(app_rows["per_level"])
        print(f"app process memory: {app_rows['rss_after_first']:.0f} MB after the first edit, "
              f"{app_rows['rss_after_all']:.0f} MB after {total} edits")


if __name__ == "__main__":
    main()
