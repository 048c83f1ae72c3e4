"""Random default boxes and padded targets for the box, loss and post-processing tests."""
from __future__ import annotations

import torch


def random_priors(n: int, gen: torch.Generator) -> torch.Tensor:
    """Default boxes with random centres and sizes: no exact IoU ties, so argmax order is unique."""
    return torch.cat((torch.rand(n, 2, generator=gen), torch.rand(n, 2, generator=gen) * 0.4 + 0.05), dim=1)


def random_targets(B: int, M: int, C: int, gen: torch.Generator, min_objects: int = 1):
    n = torch.randint(min_objects, M + 1, (B,), generator=gen)
    xy = torch.rand(B, M, 2, generator=gen) * 0.7
    wh = torch.rand(B, M, 2, generator=gen) * 0.4 + 0.05
    boxes = torch.cat((xy, xy + wh), dim=-1)
    labels = torch.randint(1, C, (B, M), generator=gen)
    pad = torch.arange(M) >= n[:, None]
    return boxes.masked_fill(pad[..., None], 0.0), labels.masked_fill(pad, 0)
