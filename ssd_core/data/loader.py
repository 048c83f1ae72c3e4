"""Batching: the padded batch the loss consumes, and a deterministic DataLoader.

A batch carries padded tensors (DESIGN.md): images uint8 [B, 3, S, S], boxes [B, M, 4] xyxy in [0, 1],
labels [B, M] (label 0 = padding), and the dataset indices of its items.
"""
from __future__ import annotations

import random
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset


class Batch(NamedTuple):
    images: torch.Tensor   # uint8 [B, 3, S, S]
    boxes: torch.Tensor    # float32 [B, M, 4] xyxy in [0, 1]; padding rows are 0
    labels: torch.Tensor   # int64 [B, M]; 0 = padding
    indices: torch.Tensor  # int64 [B] dataset indices

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in self))




def collate(batch: Sequence[tuple]) -> Batch:
    """Stack images and pad boxes/labels to M = max objects in the batch (at least 1), label 0 = padding."""
    images, boxes, labels, indices = zip(*batch)
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        raise ValueError(f"collate needs equally sized images (got {sorted(shapes)}); use a resizing transform")
    m = max(1, max(len(lb) for lb in labels))
    boxes = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes]
    labels = [torch.as_tensor(lb, dtype=torch.int64).reshape(-1) for lb in labels]
    padded_boxes = pad_sequence(boxes + [torch.zeros(m, 4)], batch_first=True)[:-1]
    padded_labels = pad_sequence(labels + [torch.zeros(m, dtype=torch.int64)], batch_first=True)[:-1]
    return Batch(torch.stack(images), padded_boxes, padded_labels, torch.as_tensor(indices, dtype=torch.int64))


def seed_worker(worker_id: int) -> None:
    """worker_init_fn: seed numpy and random from torch's per-worker seed (base_seed + worker_id)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, num_workers: int = 0, seed: int = 0,
                pin_memory: bool | None = None, persistent_workers: bool | None = None,
                drop_last: bool = False, collate_fn: Callable = collate) -> DataLoader:
    """A deterministic DataLoader: seeded generator (shuffle order, worker base seeds) + seed_worker.

    pin_memory=None -> torch.cuda.is_available(); persistent_workers=None -> num_workers > 0.
    """
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      collate_fn=collate_fn, pin_memory=pin_memory, drop_last=drop_last, generator=generator,
                      worker_init_fn=seed_worker if num_workers > 0 else None,
                      persistent_workers=bool(persistent_workers and num_workers > 0))
