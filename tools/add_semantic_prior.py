"""Give a trained model without the semantic prior one, rendering exactly as before.

A model trained before the prior existed has learned a lot that a new model would have to
learn again (how to turn codes into valid chroma, how levels hand over). This writes the
same model with `semantic_encoder="alexnet"`: every level's input conv gets zero weights
for the new semantic channels and the adapter starts fresh, so the new file renders the
same pictures as the old one (checked here) until training teaches it to use the prior.
Continue training it with `python -m chimle train --init-from NEW ...`.

    python -m tools.add_semantic_prior --checkpoint checkpoints/colourization-cpu.safetensors \\
        --out runs/colourization-cpu-semantic-init.safetensors
"""

from __future__ import annotations

import argparse

import torch

from chimle.checkpoint import load_checkpoint, save_checkpoint
from chimle.codes import LatentCodes
from chimle.model import TowerImplicitModel

# Weight-normalised convs store the direction v as `original1`, (out, in, kh, kw). Zero
# columns leave v's norm, hence the weight, unchanged, yet they receive gradients.
INPUT_DIRECTION = "levels.{level}.input_conv.parametrizations.weight.original1"


def with_semantic_prior(net: TowerImplicitModel, seed: int = 0) -> TowerImplicitModel:
    """A copy of `net` with the AlexNet prior whose outputs equal `net`'s."""
    if net.config.semantic_encoder:
        raise ValueError("this model already has a semantic prior")
    config = net.config.replace(semantic_encoder="alexnet")
    torch.manual_seed(seed)
    grown = TowerImplicitModel(config)
    state = grown.state_dict()
    insert_at = config.in_channels + config.local_code_channels  # inputs: x, code, semantic, previous
    for name, tensor in net.state_dict().items():
        if name.startswith("levels.") and name.endswith("input_conv.parametrizations.weight.original1"):
            zeros = tensor.new_zeros(tensor.shape[0], config.semantic_channels, *tensor.shape[2:])
            tensor = torch.cat([tensor[:, :insert_at], zeros, tensor[:, insert_at:]], 1)
        state[name] = tensor
    grown.load_state_dict(state)
    return grown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="model file without the prior")
    parser.add_argument("--out", required=True, help="model file to write")
    args = parser.parse_args(argv)
    source = load_checkpoint(args.checkpoint)
    grown = with_semantic_prior(source.net).eval()
    # The promise: the same pictures (up to float rounding of the concatenated conv).
    x = torch.rand(2, source.net.config.in_channels, 64, 64) * 2 - 1
    codes = LatentCodes.sample(source.net.code_shape((64, 64)), 2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        gap = (grown(x, codes)[-1] - source.net(x, codes)[-1]).abs().max().item()
    if gap > 1e-5:
        raise SystemExit(f"error: the grown model's output differs by {gap}")
    lineage = source.metadata.get("lineage") or [
        {"run": source.metadata.get("run"), "steps": source.metadata.get("step"),
         "train_seconds": source.metadata.get("train_seconds"), "data": source.metadata.get("data"),
         "method": source.metadata.get("method"), "preset": source.metadata.get("preset")}]
    metadata = {**source.metadata, "lineage": lineage, "grown_from": args.checkpoint,
                "note": "semantic prior added with zero input weights (tools.add_semantic_prior)"}
    save_checkpoint(args.out, grown, source.task, metadata)
    print(f"wrote {args.out}: same outputs as {args.checkpoint} (max difference {gap:.2e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
