"""A blind JPEG model's figures per quality, next to the decoded JPEG and a published restorer.

Reads `python -m chimle eval ... --task-params '{"quality": Q}'` reports, one per quality,
and prints a Markdown table: PSNR and LPIPS of the decoded JPEG (the no-model baseline), of
an average sample (mean over the samples) and of the best of them, and the PSNR that FBCNN
reports for the same test set and quality.

    python -m tools.jpeg_table REPORT_Q10.json REPORT_Q20.json REPORT_Q30.json

FBCNN's figures (Jiang, Zhang and Timofte, "Towards Flexible Blind JPEG Artifacts Removal",
ICCV 2021, its table of colour JPEG results on LIVE1) are for whole photos, RGB PSNR, one
deterministic output per photo; its "JPEG" row is the decoded input under their protocol.
Compare our own decoded-JPEG PSNR with that row before comparing restorers: when the two
differ, so do the protocols (whole photos or crops, the encoder's chroma subsampling).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# quality -> (decoded JPEG PSNR, FBCNN PSNR) in dB, colour LIVE1, transcribed from FBCNN's paper
# (not from a file of its authors: check them against the paper before quoting them).
FBCNN_LIVE1 = {10: (25.69, 27.77), 20: (28.06, 30.11), 30: (29.37, 31.43)}
FBCNN_CITATION = "FBCNN (Jiang et al., ICCV 2021), colour LIVE1, whole photos"


def _quality(report: dict) -> int:
    task = report["task"]
    if task.get("name") != "jpeg" or task.get("max_quality") is not None:
        raise ValueError(f"{report['checkpoint']}: not a report at one JPEG quality ({task}); "
                         f"measure with eval --task-params '{{\"quality\": Q}}'")
    return int(task["quality"])


def _cell(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def jpeg_table(reports: list[dict]) -> str:
    """The Markdown table of `reports` (eval reports at one quality each), by quality."""
    header = ("| quality | photos | decoded JPEG PSNR / LPIPS | mean sample PSNR / LPIPS | "
              "best-of-K (by LPIPS) PSNR / LPIPS | published decoded JPEG / FBCNN PSNR |")
    lines = [header, "|---|---|---|---|---|---|"]
    for report in sorted(reports, key=_quality):
        quality, summary = _quality(report), report["summary"]
        published = FBCNN_LIVE1.get(quality)
        cited = f"{published[0]:.2f} / {published[1]:.2f}" if published else "n/a"
        lines.append(
            f"| {quality} | {report['num_images']} | {_cell(summary.get('baseline_psnr'), 2)} / "
            f"{_cell(summary['baseline_lpips'], 4)} | {_cell(summary.get('mean_psnr'), 2)} / "
            f"{_cell(summary['mean_lpips'], 4)} | {_cell(summary['best_psnr'], 2)} / "
            f"{_cell(summary['best_lpips'], 4)} | {cited} |")
    return "\n".join(lines) + f"\n\nPublished figures: {FBCNN_CITATION}.\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="files of `python -m chimle eval --out`, one per JPEG quality")
    args = parser.parse_args()
    # `eval --out` writes {"format": ..., "reports": [one per checkpoint]}.
    print(jpeg_table([report for path in args.reports for report in json.loads(Path(path).read_text())["reports"]]))


if __name__ == "__main__":
    main()
