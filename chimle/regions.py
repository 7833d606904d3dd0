"""Regions of a photo found by k-means over its semantic map (`ModelConfig.region_partition`).

A learned softmax partition (a 1x1 conv over the semantic map) gives the region codes their
regions in the first models; trained, it stayed nearly uniform (every pixel about 1/K in each
region: entropy 2.06-2.07 of at most 2.08 nats for K = 8 in the fourth colourization leg's
region styles, `benchmarks/region_partition.py` on 8 Kodak24 crops), so each region's vector
was the whole photo's and a code could only tint. Clustering each photo's own semantic map cannot collapse so: every photo is divided
into K parts that share features, which for the prior's maps are mostly its objects and
surfaces (sky, a parrot, a wall).

Deterministic for a given map, so that a photo keeps its regions from render to render
(the studio steers region by region), and batched: a training batch clusters every photo
at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Lloyd iterations. Not run to convergence: on the 22 x 32 level-1 maps of the 24 Kodak24
# photos the assignment stops changing after 7 to 26 (median 13), and 10 leave 4.7% of
# pixels (at most 25%, one photo) in another region than 50 would. The shipped colourization
# model was trained with 10: changing it moves its regions.
KMEANS_ITERATIONS = 10
# Soft weights are softmax(sharpness * cosine similarity to each centre): at 20 a pixel
# gives its own region 0.86 of its weight on average (8 Kodak24 crops,
# `benchmarks/region_partition.py`), the rest going to neighbouring regions near the
# boundaries, so region styles blend instead of stepping at the coarse level's pixel grid.
REGION_SHARPNESS = 20.0


def kmeans_region_weights(semantic: torch.Tensor, regions: int, iterations: int = KMEANS_ITERATIONS,
                          sharpness: float = REGION_SHARPNESS) -> torch.Tensor:
    """(B, K, h, w) soft weights of K regions per photo, summing to 1 per pixel.

    Spherical k-means over the pixels of each (B, S, h, w) map: features are unit vectors
    (the prior's maps vary in scale from photo to photo), averaged over 3 x 3 neighbourhoods
    first so that regions are connected areas rather than speckle. The centres start at
    the pixel nearest the photo's mean feature and then, one by one, the pixel least like
    any centre so far (farthest-point seeding: deterministic, and spread over the photo's
    different contents). No gradient flows through the regions; the pooled codes are still
    differentiable in the code.
    """
    with torch.no_grad():
        batch, _, height, width = semantic.shape
        smoothed = F.avg_pool2d(F.normalize(semantic.float(), dim=1), 3, 1, 1, count_include_pad=False)
        pixels = F.normalize(smoothed.flatten(2).transpose(1, 2), dim=2)  # (B, N, S)
        rows = torch.arange(batch, device=semantic.device)
        mean = F.normalize(pixels.mean(1, keepdim=True), dim=2)  # (B, 1, S)
        seeds = [(pixels @ mean.transpose(1, 2)).squeeze(2).argmax(1)]
        likeness = torch.full((batch, height * width), -2.0, device=semantic.device)
        for _ in range(regions - 1):
            centre = pixels[rows, seeds[-1]]  # (B, S)
            likeness = torch.maximum(likeness, (pixels @ centre[:, :, None]).squeeze(2))
            seeds.append(likeness.argmin(1))
        centres = torch.stack([pixels[rows, seed] for seed in seeds], 1)  # (B, K, S)
        for _ in range(iterations):
            members = F.one_hot((pixels @ centres.transpose(1, 2)).argmax(2), regions).float()  # (B, N, K)
            sums = members.transpose(1, 2) @ pixels  # (B, K, S)
            occupied = members.sum(1)[:, :, None] > 0
            centres = torch.where(occupied, F.normalize(sums, dim=2), centres)  # an empty region keeps its centre
        weights = (sharpness * (pixels @ centres.transpose(1, 2))).softmax(2)  # (B, N, K)
        return weights.transpose(1, 2).reshape(batch, regions, height, width).to(semantic.dtype)
