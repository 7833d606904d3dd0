"""The trained models in checkpoints/: each loads safely, fits the size limit, has its card,
report and figure, beats its no-model baseline, and turns a shipped example into pictures.

These check the files a fresh clone gets, so a checkpoint committed without its card, or a
card whose figures no longer match its report, fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from chimle.checkpoint import load_checkpoint
from chimle.images import load_rgb
from chimle.pipeline import prepare, render, sample_codes

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = REPO / "checkpoints"
SHIPPED = sorted(path.stem for path in CHECKPOINTS.glob("*.safetensors"))
MAX_BYTES = 25 * 2 ** 20  # the size limit a shipped checkpoint must stay under
# The example input each task's model is shown with in the studio (assets/ATTRIBUTION.md).
EXAMPLE = {"colourization": "mountain-grey.png", "jpeg": "cat-jpeg-q5.jpg", "super_resolution": "cat-small-48px.png",
           "synthetic_night_to_day": "dogs-synthetic-night.png"}


def test_the_four_tasks_are_shipped():
    tasks = {load_checkpoint(CHECKPOINTS / f"{name}.safetensors").task.name for name in SHIPPED}
    assert tasks == set(EXAMPLE)


@pytest.mark.parametrize("name", SHIPPED)
def test_checkpoint_card_report_and_figure_agree(name):
    path = CHECKPOINTS / f"{name}.safetensors"
    assert path.stat().st_size <= MAX_BYTES
    step = load_checkpoint(path).metadata["step"]
    card = (CHECKPOINTS / f"{name}.md").read_text()
    assert f"- Trained: {step} steps in " in card and f"--steps {step} " in card
    [report] = json.loads((CHECKPOINTS / f"{name}.eval.json").read_text())["reports"]
    summary = report["summary"]
    # Best-of-16 beats the no-model baseline; the mean need not (a colouring of the wrong tint
    # can be further from the truth than grey).
    assert summary["best_lpips"] < min(summary["mean_lpips"], summary["baseline_lpips"])
    for label, key in (("best-of-16 LPIPS to the true photo", "best_lpips"),
                       ("LPIPS diversity (mean pairwise, per photo)", "lpips_diversity")):
        assert f"| {label} | {summary[key]:.4f} |" in card, label
    assert (CHECKPOINTS / f"{name}.png").stat().st_size > 0
    # The table of all models names this one with the same step and best-of-16.
    row = next(line for line in (CHECKPOINTS / "README.md").read_text().splitlines() if f"| `{name}` |" in line)
    cells = [cell.strip() for cell in row.split("|")]
    assert str(step) in cells and f"{summary['best_lpips']:.3f}" in cells, row


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_example_renders_to_distinct_finite_samples(name):
    model = load_checkpoint(CHECKPOINTS / f"{name}.safetensors")
    photo = load_rgb(REPO / "assets" / EXAMPLE[model.task.name])
    prepared = prepare(model.net, model.task, photo, max_side=256)  # the studio default
    with torch.no_grad():
        images, _ = render(model.net, model.task, prepared, sample_codes(model.net, prepared, 2, seed=0))
    final = images[-1]
    assert final.shape[0] == 2 and max(final.shape[-2:]) <= 256 and torch.isfinite(final).all()
    assert not torch.equal(final[0], final[1])  # different codes, different pictures
    assert re.fullmatch(r"[a-z0-9-]+", name)  # the studio and URLs show the file name as is
