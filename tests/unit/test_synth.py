"""synth: byte-identical output for a seed, readable by VOCDataset, sensible object sizes, and an
idempotent, concurrency-safe ensure_synthetic."""
from __future__ import annotations

import json
import multiprocessing
import os

import numpy as np
import pytest

from ssd_core.data import VOCDataset, check_dataset, read_image_set
from ssd_core.errors import DataError
from ssd_core.synth import MARKER, SUBDIR, SYNTH_CLASSES, ensure_synthetic, generate, render_image


def tree(root):
    """{relative path: bytes} of every file under root."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_the_same_bytes_and_image_i_does_not_depend_on_the_count(tmp_path):
    a, b = tree(generate(tmp_path / "a", 10, seed=3, image_size=96)), tree(generate(tmp_path / "b", 10, seed=3, image_size=96))
    assert a == b and len([k for k in a if k.endswith(".jpg")]) == 10
    fewer = tree(generate(tmp_path / "c", 4, seed=3, image_size=96))
    assert all(fewer[k] == a[k] for k in fewer if k.startswith(f"{SUBDIR}/JPEGImages"))
    other = tree(generate(tmp_path / "d", 10, seed=4, image_size=96))
    assert other[f"{SUBDIR}/JPEGImages/000000.jpg"] != a[f"{SUBDIR}/JPEGImages/000000.jpg"]
    with pytest.raises(DataError, match="already exists"):
        generate(tmp_path / "a", 10, seed=3, image_size=96)


def test_the_set_reads_back_through_the_voc_reader_with_disjoint_splits(tmp_path):
    root = generate(tmp_path, 20, seed=0, image_size=128)
    split = {s: read_image_set(root, f"{SUBDIR}/{s}") for s in ("train", "val", "trainval", "test")}
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (12, 4, 4)
    assert sorted(split["trainval"]) == sorted(split["train"] + split["val"])
    assert not set(split["test"]) & set(split["trainval"])
    ds = VOCDataset(root, [f"{SUBDIR}/trainval", f"{SUBDIR}/test"], keep_difficult=True)
    assert ds.class_names == sorted(SYNTH_CLASSES) and len(ds) == 20
    for i in range(len(ds)):
        t, (w, h) = ds.annotation(i), ds.image_size(i)
        assert max(w, h) == 128 and 96 <= min(w, h) <= 128 and len(t.labels) >= 1
        assert (t.boxes[:, 2:] > t.boxes[:, :2]).all() and (t.boxes[:, 2] <= w).all() and (t.boxes[:, 3] <= h).all()
    assert check_dataset(root).ok


def test_objects_range_from_tiny_to_large_and_are_not_too_small_on_average():
    sides, classes, counts = [], set(), []
    for i in range(40):
        img, objects = render_image(np.random.default_rng([0, i]), 160)
        counts.append(len(objects))
        for o in objects:
            x0, y0, x1, y1 = o["box"]
            sides.append(max(x1 - x0 + 1, y1 - y0 + 1) / min(img.size))
            classes.add(o["name"])
    sides = np.array(sides)
    assert classes == set(SYNTH_CLASSES) and 1 <= min(counts) and max(counts) <= 4
    assert sides.min() < 0.12 and sides.max() > 0.45           # tiny .. large
    assert 0.15 < sides.mean() < 0.4                          # learnable at 128-160 px


def test_shapes_are_drawn_inside_their_boxes():
    img, objects = render_image(np.random.default_rng([7, 0]), 160)
    a = np.asarray(img).astype(int)
    for o in objects:
        x0, y0, x1, y1 = o["box"]
        inside = a[y0:y1 + 1, x0:x1 + 1].reshape(-1, 3)
        # a solid-coloured shape fills a good part of its box: the most common colour covers >= 20%
        colours, n = np.unique(inside // 8, axis=0, return_counts=True)
        assert n.max() >= 0.2 * len(inside) or o["difficult"]


def test_ensure_synthetic_is_idempotent_and_replaces_other_parameters(tmp_path):
    ensure_synthetic(tmp_path, images=6, seed=1, image_size=96)
    marker = tmp_path / SUBDIR / MARKER
    assert json.loads(marker.read_text())["images"] == 6
    stamp = os.stat(marker).st_mtime_ns
    ensure_synthetic(tmp_path, images=6, seed=1, image_size=96)
    assert os.stat(marker).st_mtime_ns == stamp                # untouched
    ensure_synthetic(tmp_path, images=5, seed=1, image_size=96)
    assert json.loads(marker.read_text())["images"] == 5 and len(read_image_set(tmp_path, f"{SUBDIR}/trainval")) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [SUBDIR]   # no temp dirs left behind


def test_a_partial_set_without_marker_is_rebuilt(tmp_path):
    (tmp_path / SUBDIR / "JPEGImages").mkdir(parents=True)
    (tmp_path / SUBDIR / "JPEGImages" / "junk.jpg").write_bytes(b"partial")
    ensure_synthetic(tmp_path, images=4, seed=0, image_size=64)
    assert not (tmp_path / SUBDIR / "JPEGImages" / "junk.jpg").exists()
    assert tree(tmp_path / SUBDIR) == tree(generate(tmp_path / "ref", 4, seed=0, image_size=64) / SUBDIR)


def _ensure(root):
    ensure_synthetic(root, images=8, seed=2, image_size=64)
    return True


def test_concurrent_callers_all_succeed_with_one_complete_set(tmp_path):
    with multiprocessing.get_context("fork").Pool(3) as pool:
        assert pool.map(_ensure, [tmp_path / "data"] * 3) == [True] * 3
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [SUBDIR]
    assert tree(tmp_path / "data" / SUBDIR) == tree(generate(tmp_path / "ref", 8, seed=2, image_size=64) / SUBDIR)
