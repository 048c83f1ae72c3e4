"""What a run trained and was scored on, written down: one record per split (rundir.DATA_RECORD).

    split_record(ds, split, cfg, skipped)   {split, name, digest, source, images, objects, skipped}
    digest(ds)                              16 hex chars over the image list and every annotation as read

The digest is of what the dataset hands the model (each image's key and its boxes, labels and difficult
flags as parsed), whatever the format: two runs on different versions of a dataset (an image added, a box
moved, a class renamed) have different digests; the same files read twice give the same one. The tracking
side logs each record as an MLflow dataset input (experiments/tracking/writer.py `log_dataset`), so the
runs table's Dataset column says what each run saw.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence


def digest(ds) -> str:
    from ssd_core.data.dataset import image_keys

    h = hashlib.sha256()
    h.update("\n".join(ds.class_names).encode())
    for key, rec in sorted(zip(image_keys(ds), ds.records), key=lambda kr: kr[0]):
        t = rec.target
        h.update(key.encode())
        for part in (t.boxes, t.labels, t.difficult):
            h.update(part.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def split_record(ds, split: str, cfg, skipped: Sequence[str] = ()) -> dict:
    """The record of one split's dataset `ds` under config `cfg` (data section: format, root, sets, slices)."""
    from ssd_core.build import split_sets
    from ssd_core.config import resolve_data_root

    d = cfg.data
    root = resolve_data_root(cfg)
    sets, side = split_sets(cfg, split)
    base = (root.parent if root.is_file() else root).resolve().name
    name = f"{base}/{'+'.join(sets)}" + (f" ({side} slice)" if side else "")
    objects = sum(len(r.target.labels) for r in ds.records)
    return {"split": split, "name": name, "digest": digest(ds), "source": str(Path(root).resolve()),
            "format": d.format, "images": len(ds), "objects": int(objects), "skipped": list(skipped)}
