"""Render speed on the CPU: full and incremental renders, FLOPs, and the distance to peak.

    python -m benchmarks.render_speed [--checkpoints checkpoints/*-cpu.safetensors]
        [--sizes 256 512] [--repeats 3] [--variant-size 256] [--no-compile] [--out benchmarks/results]

For each shipped `cpu` checkpoint and size (batch 1, inference mode): the median time of a
full render and of the re-render after editing level l (levels < l reused, the studio's
slider path), the FLOPs of one render (torch's FlopCounterMode: convolutions and matrix
products) and the GFLOP/s achieved, as a ratio to the machine's own peak, measured in the
same run as a large fp32 matmul with the same threads. Rows are given for the model as
loaded and for `inference_copy` (weight norm folded into plain weights, channels-last).

Then, on the first checkpoint at --variant-size, what might help on a CPU: channels-last,
folding weight norm into plain weights, both, torch.compile, bfloat16 autocast, and 1 vs 2
threads. Each variant's output is compared with the model as loaded (largest absolute
difference of the RGB image in [-1, 1], against a stated tolerance).

Timings are medians of wall time and of process CPU time, on whatever else the machine runs:
with one thread the CPU time leaves out the time other jobs had the core, so comparisons
and GFLOP/s use it (the matmul peak is measured the same way). The load average at the start
and end is printed and stored. Writes render_speed.json and render_speed.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode

from chimle.checkpoint import load_checkpoint
from chimle.codes import LatentCodes
from chimle.model import TowerImplicitModel

DEFAULT_CHECKPOINTS = ("checkpoints/colourization-cpu.safetensors", "checkpoints/jpeg-q1-cpu.safetensors")
# Largest |difference| of an RGB output in [-1, 1] that counts as the same picture for an
# fp32 variant (different kernels sum in different orders; 1e-4 is 1/80 of an 8-bit step).
TOLERANCE = 1e-4


def count_flops(fn: Callable[[], object], *modules: torch.nn.Module) -> int:
    """FLOPs of convolutions and matrix products that `fn` runs (torch's FlopCounterMode).

    The counter hooks autograd on parameters that require grad, which fails in inference
    mode; the parameters of `modules` are frozen while it counts.
    """
    parameters = [p for module in modules for p in module.parameters() if p.requires_grad]
    for p in parameters:
        p.requires_grad_(False)
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        for p in parameters:
            p.requires_grad_(True)
    return counter.get_total_flops()


def median_seconds(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall time and median process CPU time of `fn` over `repeats` calls, after a warm-up.

    On a machine shared with other jobs the wall time includes the time others had the
    core; with one thread the CPU time does not, so it is the steadier measure of the work.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> dict[str, float]:
    """The machine's practical fp32 peak: GFLOP/s of a large square matmul, current threads.

    Returns GFLOP/s by wall time and per CPU-second (the same for one thread on an idle core).
    """
    a = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
    b = torch.randn(size, size, generator=torch.Generator().manual_seed(1))
    wall, cpu = median_seconds(lambda: a @ b, repeats)
    return {"wall": 2 * size ** 3 / wall / 1e9, "cpu": 2 * size ** 3 / cpu / 1e9}


@dataclass
class Inputs:
    x: torch.Tensor
    codes: LatentCodes


def make_inputs(net: TowerImplicitModel, size: int, seed: int = 0) -> Inputs:
    """A random input at the model's first level size for a size x size output, and one code."""
    x = torch.rand(1, net.config.in_channels, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    codes = LatentCodes.sample(net.code_shape((size, size)), 1, torch.Generator().manual_seed(seed))
    return Inputs(x, codes)


def render_flops(net: TowerImplicitModel, inputs: Inputs) -> int:
    """FLOPs of one full render."""
    with torch.inference_mode():
        return count_flops(lambda: net.render(inputs.x, inputs.codes), net)


def time_renders(net: TowerImplicitModel, inputs: Inputs, repeats: int) -> dict:
    """Median wall and CPU seconds of a full render and of the re-render from each level."""
    with torch.inference_mode():
        full = median_seconds(lambda: net.render(inputs.x, inputs.codes), repeats)
        cached = net.render(inputs.x, inputs.codes)
        partial = [median_seconds(lambda level=level: net.render(inputs.x, inputs.codes, reuse=cached,
                                                                 start_level=level), repeats)
                   for level in range(1, net.num_levels)]
    times = [full] + partial
    return {"full": full[0], "full_cpu": full[1], "rerender_from_level": [t[0] for t in times],
            "rerender_from_level_cpu": [t[1] for t in times]}


# -- variants ---------------------------------------------------------------------------------

def _fresh(net: TowerImplicitModel) -> TowerImplicitModel:
    """An independent copy, from config and state dict.

    Not deepcopy: a deepcopy shares weight norm's generated module classes, and folding the
    copy's weight norm would then strip the original's weights too.
    """
    copy = TowerImplicitModel(net.config)
    copy.load_state_dict(net.state_dict())
    parameter = next(net.parameters())
    return copy.to(device=parameter.device, dtype=parameter.dtype).eval().requires_grad_(False)


def fold_weight_norm(net: TowerImplicitModel) -> TowerImplicitModel:
    """Replace every weight-normalised conv's (g, v) by its plain weight g v / |v|, in place.

    The outputs stay the same; inference no longer recomputes the weights on every call, and
    the plain weights can be stored channels-last. Training needs the parametrization.
    """
    for module in net.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return net


def inference_copy(net: TowerImplicitModel) -> TowerImplicitModel:
    """A copy for inference: weight norm folded, channels-last, eval, no grad; `net` is untouched."""
    return fold_weight_norm(_fresh(net)).to(memory_format=torch.channels_last)


def _autocast_bf16(net: TowerImplicitModel) -> Callable[[Inputs], torch.Tensor]:
    def run(inputs: Inputs) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return net.render(inputs.x, inputs.codes).outputs[-1].float()
    return run


def _plain(net: TowerImplicitModel) -> Callable[[Inputs], torch.Tensor]:
    return lambda inputs: net.render(inputs.x, inputs.codes).outputs[-1]


def _compiled(net: TowerImplicitModel) -> Callable[[Inputs], torch.Tensor]:
    # Compile each level's module: the render loop itself (reuse, start levels) stays eager.
    for level in range(net.num_levels):
        net.levels[level] = torch.compile(net.levels[level])
    return _plain(net)


def variant_builders() -> dict[str, tuple[Callable[[TowerImplicitModel], Callable[[Inputs], torch.Tensor]], int]]:
    """Name -> (build a render function from the loaded model, threads)."""
    return {
        "as loaded": (lambda net: _plain(_fresh(net)), 1),
        "channels-last": (lambda net: _plain(_fresh(net).to(memory_format=torch.channels_last)), 1),
        "weight norm folded": (lambda net: _plain(fold_weight_norm(_fresh(net))), 1),
        "folded + channels-last (inference_copy)": (lambda net: _plain(inference_copy(net)), 1),
        "bfloat16 autocast (on inference_copy)": (lambda net: _autocast_bf16(inference_copy(net)), 1),
        "torch.compile (on inference_copy)": (lambda net: _compiled(inference_copy(net)), 1),
        "as loaded, 2 threads": (lambda net: _plain(_fresh(net)), 2),
        "inference_copy, 2 threads": (lambda net: _plain(inference_copy(net)), 2),
    }


def run_variants(net: TowerImplicitModel, task, inputs: Inputs, repeats: int, skip: set[str],
                 progress: Callable[[str], None]) -> list[dict]:
    """Time every variant's full render and compare its RGB output with the model as loaded."""
    threads_before = torch.get_num_threads()
    with torch.inference_mode():
        reference = task.to_rgb(inputs.x, net.render(inputs.x, inputs.codes).outputs[-1])
    rows = []
    for name, (build, threads) in variant_builders().items():
        if any(word in name for word in skip):
            rows.append({"name": name, "threads": threads, "skipped": True})
            continue
        torch.set_num_threads(threads)
        row = {"name": name, "threads": threads}
        try:
            started = time.perf_counter()
            run = build(net)
            with torch.inference_mode():
                output = task.to_rgb(inputs.x, run(inputs))  # the first call compiles, if it compiles
            row["setup_seconds"] = time.perf_counter() - started
            with torch.inference_mode():
                # bf16 on a CPU without bf16 instructions is slow: one timed call is enough.
                row["full"], row["full_cpu"] = median_seconds(lambda: run(inputs), 1 if "bfloat16" in name else repeats)
            row["max_abs_diff"] = float((output - reference).abs().max())
            row["within_tolerance"] = row["max_abs_diff"] <= TOLERANCE
        except Exception as error:  # a variant that cannot run here is a result, not a crash
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            row["traceback_tail"] = traceback.format_exc().splitlines()[-3:]
        finally:
            torch.set_num_threads(threads_before)
        rows.append(row)
        progress(f"variant {name}: " + (f"{row['full']:.3f} s ({row['full_cpu']:.3f} s CPU), "
                                        f"max diff {row['max_abs_diff']:.1e}"
                                        if "full" in row else row.get("error", "")))
    return rows


# -- reporting --------------------------------------------------------------------------------

def markdown_tables(result: dict) -> str:
    peak = result["peak_gflops"]["1"]["cpu"]
    lines = ["| model | size | path | GFLOP/render | full render, wall (s) | full render, CPU (s) | "
             "re-render from level 2..L, CPU (s) | GFLOP/s per CPU-s | share of matmul peak |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result["renders"]:
        gflops = row["flops"] / 1e9
        achieved = gflops / row["full_cpu"]
        lines.append(f"| {row['model']} | {row['size']} | {row['path']} | {gflops:.1f} | {row['full']:.2f} | "
                     f"{row['full_cpu']:.2f} | " + " / ".join(f"{t:.2f}" for t in row["rerender_from_level_cpu"][1:])
                     + f" | {achieved:.1f} | {achieved / peak:.0%} |")
    lines += ["", f"Variants ({result['variant_model']}, {result['variant_size']} px, full render, batch 1; "
              f"tolerance {result['tolerance']:g} on RGB in [-1, 1]; speed-ups against 'as loaded' on 1 thread):", "",
              "| variant | threads | wall (s) | CPU (s) | speed-up, wall | speed-up, CPU | max abs diff | "
              "within tolerance | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    base = next(v for v in result["variants"] if v["name"] == "as loaded")
    for v in result["variants"]:
        if v.get("skipped"):
            lines.append(f"| {v['name']} | {v['threads']} | - | - | - | - | - | - | skipped |")
        elif "error" in v:
            lines.append(f"| {v['name']} | {v['threads']} | - | - | - | - | - | - | failed: {v['error'][:80]} |")
        else:
            note = f"setup and first call {v['setup_seconds']:.0f} s" if "compile" in v["name"] else ""
            if v["threads"] > 1:
                note = "CPU time sums both threads"
            lines.append(f"| {v['name']} | {v['threads']} | {v['full']:.2f} | {v['full_cpu']:.2f} | "
                         f"{base['full'] / v['full']:.2f}x | {base['full_cpu'] / v['full_cpu']:.2f}x | "
                         f"{v['max_abs_diff']:.1e} | {'yes' if v['within_tolerance'] else 'no'} | {note} |")
    lines += ["", "Matmul peak (2048x2048 fp32): " + ", ".join(
        f"{threads} thread(s) {value['wall']:.1f} GFLOP/s by wall time, {value['cpu']:.1f} per CPU-second"
        for threads, value in result["peak_gflops"].items())]
    return "\n".join(lines)


def plot(result: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    rows = result["renders"]
    labels = [f"{r['model'].split('-')[0][:6]}\n{r['size']}\n{'loaded' if r['path'] == 'as loaded' else 'copy'}"
              for r in rows]
    levels = len(rows[0]["rerender_from_level"])
    width = 0.8 / levels
    for level in range(levels):
        left.bar([i + level * width for i in range(len(rows))], [r["rerender_from_level_cpu"][level] for r in rows],
                 width, label="full render" if level == 0 else f"re-render from level {level + 1}")
    left.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], labels, fontsize=7)
    left.set_ylabel("CPU seconds (median, batch 1, 1 thread)")
    left.set_yscale("log")
    left.legend(fontsize=7)
    left.set_title("render time", fontsize=9)
    variants = [v for v in result["variants"] if "full" in v]
    positions = range(len(variants))
    right.barh([p - 0.2 for p in positions], [v["full"] for v in variants], 0.4, label="wall", color="tab:gray")
    right.barh([p + 0.2 for p in positions], [v["full_cpu"] for v in variants], 0.4, label="CPU (summed over threads)",
               color=["tab:green" if v["within_tolerance"] else "tab:red" for v in variants])
    right.set_yticks(list(positions), [f"{v['name']} ({v['threads']} thr.)" for v in variants], fontsize=7)
    right.set_xscale("log")
    right.set_xlabel(f"seconds per full render at {result['variant_size']} px; red: output outside tolerance",
                     fontsize=7)
    right.invert_yaxis()
    right.legend(fontsize=7)
    right.set_title("variants", fontsize=9)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", nargs="+", default=list(DEFAULT_CHECKPOINTS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="threads for the main table")
    parser.add_argument("--variant-size", type=int, default=256)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant (minutes)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    say = lambda message: print(message, flush=True)  # noqa: E731
    say(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"main table at {args.threads} thread(s); load average at start {load_start[0]:.1f}")

    peak = {}
    for threads in sorted({args.threads, 1, 2}):
        torch.set_num_threads(threads)
        peak[str(threads)] = matmul_peak_gflops()
        say(f"matmul peak, {threads} thread(s): {peak[str(threads)]['wall']:.1f} GFLOP/s by wall time, "
            f"{peak[str(threads)]['cpu']:.1f} per CPU-second")
    torch.set_num_threads(args.threads)

    renders = []
    loaded = [(Path(path).name.removesuffix(".safetensors"), load_checkpoint(path)) for path in args.checkpoints]
    for name, checkpoint in loaded:
        net = checkpoint.net.requires_grad_(False)
        fast = inference_copy(net)
        for size in args.sizes:
            inputs = make_inputs(net, size)
            flops = render_flops(net, inputs)
            for path, model in (("as loaded", net), ("inference_copy", fast)):
                times = time_renders(model, inputs, args.repeats)
                renders.append({"model": name, "size": size, "path": path, "flops": flops,
                                "parameters": sum(p.numel() for p in net.parameters()), **times})
                say(f"{name} {size} px {path}: full {times['full']:.3f} s ({times['full_cpu']:.3f} s CPU), "
                    f"{flops / 1e9 / times['full_cpu']:.1f} GFLOP per CPU-second")

    variant_name, checkpoint = loaded[0]
    inputs = make_inputs(checkpoint.net, args.variant_size)
    variants = run_variants(checkpoint.net, checkpoint.task, inputs, args.repeats,
                            {"compile"} if args.no_compile else set(), say)
    load_end = os.getloadavg()
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "threads": args.threads,
        "repeats": args.repeats, "load_average_start": load_start[0], "load_average_end": load_end[0],
        "peak_gflops": peak, "renders": renders, "variant_model": variant_name,
        "variant_size": args.variant_size, "variants": variants, "tolerance": TOLERANCE,
    }
    title = (f"{result['date']}, torch {torch.__version__}, {result['machine']}, batch 1; load average "
             f"{load_start[0]:.1f} -> {load_end[0]:.1f} (other jobs shared the CPUs)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "render_speed.json").write_text(json.dumps(result, indent=1) + "\n")
    print()
    print(markdown_tables(result))
    print(f"\n{title}")
    plot(result, out / "render_speed.png", title)
    print(f"wrote {out / 'render_speed.json'} and {out / 'render_speed.png'}")


if __name__ == "__main__":
    main()
