"""A model's figure for its card and the README: held-out input | four samples | truth.

    python -m tools.model_figure --checkpoint checkpoints/colourization-cpu.safetensors \
        --data data/demo/held_out --out checkpoints/colourization-cpu.png

One row per held-out photo (center crops), samples from seeded codes, so the figure is
reproducible from the command.
"""

from __future__ import annotations

import argparse

import torch
from torchvision.utils import make_grid

from chimle.checkpoint import load_checkpoint
from chimle.codes import LatentCodes
from chimle.data import ImageCorpus, PairedCorpus, find_images, find_pairs, validation_batch
from chimle.images import save_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="held-out photos (input/ and target/ for paired tasks)")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--crop-size", type=int, default=256)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-side", type=int, default=512, help="fit photos to this side first; 0: own size")
    parser.add_argument("--only", nargs="+", metavar="STEM", help="these photos (file names without extension)")
    args = parser.parse_args()

    model = load_checkpoint(args.checkpoint)
    max_side = args.max_side or 10 ** 6
    if model.task.paired:
        corpus = PairedCorpus([p for p in find_pairs(args.data) if not args.only or p[1].stem in args.only], max_side)
    else:
        corpus = ImageCorpus([p for p in find_images(args.data) if not args.only or p.stem in args.only], max_side)
    batch = validation_batch(corpus, args.crop_size, model.task, args.rows, args.seed)
    size = tuple(batch.y.shape[-2:])
    tiles = []
    with torch.inference_mode():
        for row in range(batch.y.shape[0]):
            x = batch.x[row:row + 1].expand(args.samples, -1, -1, -1)
            codes = LatentCodes.sample(model.net.code_shape(size), args.samples,
                                       torch.Generator().manual_seed(args.seed))
            samples = model.task.to_rgb(x, model.net(x, codes)[-1])
            tiles += [model.task.input_preview(batch.x[row:row + 1], size)[0], *samples, batch.y[row]]
    grid = make_grid(torch.stack(tiles).clamp(-1, 1), nrow=args.samples + 2, padding=4, pad_value=1.0)
    save_png(args.out, grid)
    print(f"wrote {args.out}: {batch.y.shape[0]} held-out photos, {args.samples} samples each")


if __name__ == "__main__":
    main()
