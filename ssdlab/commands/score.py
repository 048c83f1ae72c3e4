"""`ssdlab score`: score detection results files with the reference metrics, without a model.

    ssdlab score --voc-root ROOT --image-set VOC2007/test --results DIR [--classes a,b] [--json OUT]
    ssdlab score --coco-gt instances.json --results dets.json [--json OUT] [--verbose]

VOC: DIR holds the devkit's `comp4_det_<split>_<class>.txt` (any `comp<N>_det_...` prefix), one
detection per line, `image_id score x1 y1 x2 y2` in 1-based pixels, as py-faster-rcnn and ssd.pytorch
write them. Ground truth comes from `<ROOT>/<subdir>/Annotations/<id>.xml` of the image set
(ssd_core.data.read_image_set / parse_voc_xml); detections get the same 0-based shift as the
annotations, so the numbers equal the devkit's (see ssd_core.evaluate). Classes: --classes, else the
VOC classes for a VOCyyyy folder, else the class names of the results files.

COCO: results json (list of {image_id, category_id, bbox [x, y, w, h], score}) against an instances
file, through pycocotools.

Prints a per-class table; --json writes {"mAP": .., "AP": {class: ..}, ...} (nan -> null).
"""
from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np

from ssd_core.errors import DataError

RESULTS_LINE = "image_id score x1 y1 x2 y2"


def register(subparsers) -> None:
    p = subparsers.add_parser("score", help="score VOC devkit or COCO results files (per-class AP, mAP)")
    p.add_argument("--results", required=True, help="VOC: folder of comp4_det_<split>_<class>.txt; COCO: results json")
    p.add_argument("--voc-root", default=None, help="VOC-layout root, e.g. data/VOCdevkit or ../shared/data/bccd")
    p.add_argument("--image-set", default=None, help="with --voc-root: e.g. VOC2007/test or BCCD/test")
    p.add_argument("--classes", default=None, help="with --voc-root: comma-separated class names (label order)")
    p.add_argument("--iou", type=float, default=0.5, help="VOC IoU threshold (strict >, default 0.5)")
    p.add_argument("--coco-gt", default=None, help="COCO instances json")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the metrics as JSON")
    p.add_argument("--verbose", action="store_true", help="show pycocotools' own output")
    p.set_defaults(func=score, _score_parser=p)


def score(args) -> int:
    parser = args._score_parser
    if (args.voc_root is None) == (args.coco_gt is None):
        parser.error("give exactly one of --voc-root (with --image-set) or --coco-gt")
    if args.voc_root is not None:
        if not args.image_set:
            parser.error("--voc-root needs --image-set, e.g. VOC2007/test")
        if not 0.0 <= args.iou < 1.0:
            parser.error(f"--iou {args.iou}: expected a number in [0, 1)")
        classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
        metrics, table = score_voc(args.voc_root, args.image_set, args.results, classes, args.iou)
    else:
        metrics, table = score_coco(args.coco_gt, args.results, verbose=args.verbose)
    print(table)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_json_safe(metrics), indent=2) + "\n")
    return 0


# ---------------------------------------------------------------- VOC devkit results


def score_voc(root, image_set: str, results_dir, class_names=None, iou_threshold: float = 0.5):
    """-> (metrics dict for --json, printable table)."""
    from ssd_core.data import VOC_CLASSES, parse_voc_xml, read_image_set
    from ssd_core.evaluate import evaluate_voc

    root, results_dir = Path(root), Path(results_dir)
    if not results_dir.is_dir():
        raise DataError(f"{results_dir}: results folder not found")
    subdir, _, split = image_set.strip("/").rpartition("/")
    subdir = subdir or "."
    image_ids = read_image_set(root, image_set)  # DataError names the missing file
    files = _results_files(results_dir, split)
    if class_names is None:
        class_names = list(VOC_CLASSES) if re.fullmatch(r"VOC\d{4}", Path(subdir).name) else sorted(files)
    unknown = sorted(set(files) - set(class_names))
    if unknown:
        raise DataError(f"{files[unknown[0]]}: class {unknown[0]!r} is not one of [{', '.join(class_names)}]"
                        " (pass --classes)")
    missing = [c for c in class_names if c not in files]
    if missing:
        print(f"note: no results file for {', '.join(missing)} in {results_dir}: no detections", file=sys.stderr)

    index = {image_id: k for k, image_id in enumerate(image_ids)}
    gt = [parse_voc_xml(root / subdir / "Annotations" / f"{i}.xml", class_names)[0] for i in image_ids]
    found = [(class_names.index(c) + 1, *_read_results_file(files[c], index)) for c in class_names if c in files]
    det_boxes = _cat([f[3] for f in found], (0, 4))
    det_boxes[:, :2] -= 1.0  # 1-based inclusive -> the annotations' 0-based (x1 - 1, y1 - 1, x2, y2)
    r = evaluate_voc(_cat([f[1] for f in found], (0,), np.int64),
                     _cat([np.full(len(f[1]), f[0]) for f in found], (0,), np.int64),
                     _cat([f[2] for f in found], (0,)), det_boxes,
                     np.repeat(np.arange(len(gt)), [len(t.labels) for t in gt]),
                     _cat([t.labels.numpy() for t in gt], (0,), np.int64),
                     _cat([t.boxes.numpy().reshape(-1, 4) for t in gt], (0, 4)),
                     _cat([t.difficult.numpy() for t in gt], (0,), bool),
                     class_names, iou_threshold)
    metrics = {"mAP": r["mAP50"], "mAP50": r["mAP50"], "mAP50_area": r["mAP50_area"], "AP": r["AP50"],
               "AP_area": r["AP50_area"], "num_gt": r["num_gt"], "num_det": r["num_det"],
               "iou_threshold": iou_threshold, "image_set": image_set, "num_images": len(image_ids)}
    rows = [(c, r["num_gt"][c], r["num_det"][c], r["AP50"][c], r["AP50_area"][c]) for c in class_names]
    table = _table(("class", "gt", "dets", "AP50 (07)", "AP50 (area)"), rows,
                   ("mAP", sum(r["num_gt"].values()), sum(r["num_det"].values()), r["mAP50"], r["mAP50_area"]))
    return metrics, f"{image_set}: {len(image_ids)} images, IoU > {iou_threshold}\n{table}"


def _cat(parts, empty_shape, dtype=np.float64) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(empty_shape, dtype)


def _results_files(results_dir: Path, split: str) -> dict[str, Path]:
    """class name -> its comp<N>_det_<split>_<class>.txt."""
    pattern = re.compile(rf"comp\d*_det_{re.escape(split)}_(.+)\.txt")
    files: dict[str, Path] = {}
    for path in sorted(results_dir.iterdir()):
        m = pattern.fullmatch(path.name)
        if m is None:
            continue
        if m.group(1) in files:
            raise DataError(f"{path}: a second results file for class {m.group(1)!r} (also {files[m.group(1)].name})")
        files[m.group(1)] = path
    if not files:
        raise DataError(f"{results_dir}: no results files named comp4_det_{split}_<class>.txt")
    return files


def _read_results_file(path: Path, index: dict[str, int]):
    """-> (image index [n], score [n], boxes [n, 4] 1-based pixels); DataError names file and line."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read results file: {exc}") from exc
    rows = [(k, line.split()) for k, line in enumerate(lines, start=1) if line.strip()]
    for k, fields in rows:
        if len(fields) != 6:
            raise DataError(f"{path}: line {k}: expected '{RESULTS_LINE}', got {len(fields)} fields: {lines[k - 1]!r}")
    try:
        values = np.array([f[1:] for _, f in rows], dtype=np.float64).reshape(-1, 5)
    except ValueError:
        k = next(k for k, f in rows if not _numeric(f[1:]))
        raise DataError(f"{path}: line {k}: non-numeric value in {lines[k - 1]!r} (expected '{RESULTS_LINE}')") from None
    bad = ~np.isfinite(values).all(1) | (values[:, 3] < values[:, 1]) | (values[:, 4] < values[:, 2])
    if bad.any():
        k = rows[int(np.argmax(bad))][0]
        raise DataError(f"{path}: line {k}: score and box must be finite with x1 <= x2, y1 <= y2: {lines[k - 1]!r}")
    images = []
    for k, fields in rows:
        i = index.get(fields[0])
        if i is None:
            raise DataError(f"{path}: line {k}: image {fields[0]!r} is not in the image set")
        images.append(i)
    return np.asarray(images, np.int64), values[:, 0], values[:, 1:]


def _numeric(fields) -> bool:
    try:
        [float(f) for f in fields]
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- COCO results


def score_coco(gt_path, results_path, verbose: bool = False):
    """-> (metrics dict for --json, printable table)."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    from ssd_core.evaluate import evaluate_coco

    gt_path, results_path = Path(gt_path), Path(results_path)
    for path in (gt_path, results_path):
        if not path.is_file():
            raise DataError(f"{path}: file not found")
    _check_coco_gt(gt_path)  # pycocotools' own errors are KeyErrors deep inside it
    try:
        with contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(gt_path))
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise DataError(f"{gt_path}: not a COCO instances file: {exc!r}") from exc
    results = _read_coco_results(results_path, set(coco.getImgIds()), set(coco.getCatIds()))
    r = evaluate_coco(coco, results, verbose=verbose)
    names = list(r["AP_per_class"])
    summary = {k: r[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")}
    metrics = {"mAP": r["AP"], "AP": r["AP_per_class"], **{k: v for k, v in summary.items() if k != "AP"},
               "num_results": len(results)}
    rows = [(c, r["AP_per_class"][c]) for c in names]
    table = _table(("class", "AP"), rows, ("mAP (AP@[.5:.95])", r["AP"]))
    table += "\n" + "  ".join(f"{k} {_fmt(v)}" for k, v in summary.items())
    return metrics, f"{results_path.name} vs {gt_path.name}: {len(results)} detections\n{table}"


def _check_coco_gt(path: Path) -> None:
    """An instances file has lists `images` ({id}), `annotations` ({image_id, category_id, bbox}) and
    `categories` ({id, name}); DataError names the file and the first key or object that is not so."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read COCO instances json: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a COCO instances file: expected an object, got {type(data).__name__}")
    required = {"images": ("id",), "annotations": ("image_id", "category_id", "bbox"), "categories": ("id", "name")}
    for key, fields in required.items():
        if not isinstance(data.get(key), list):
            what = "missing" if key not in data else f"a {type(data[key]).__name__}, expected a list"
            raise DataError(f"{path}: not a COCO instances file: `{key}` is {what}")
        for k, item in enumerate(data[key]):
            if not isinstance(item, dict) or any(f not in item for f in fields):
                raise DataError(f"{path}: {key}[{k}]: expected an object with {', '.join(fields)}, got {item!r:.120}")
    if not data["categories"]:
        raise DataError(f"{path}: not a COCO instances file: `categories` is empty")


def _read_coco_results(path: Path, image_ids: set, category_ids: set) -> list[dict]:
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read results json: {exc}") from exc
    if not isinstance(results, list):
        raise DataError(f"{path}: expected a list of detections, got {type(results).__name__}")
    for k, r in enumerate(results):
        where = f"{path}: detection {k}"
        if not isinstance(r, dict) or not {"image_id", "category_id", "bbox", "score"} <= set(r):
            raise DataError(f"{where}: expected {{image_id, category_id, bbox, score}}, got {r!r}")
        if not (isinstance(r["bbox"], list) and len(r["bbox"]) == 4
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in r["bbox"])):
            raise DataError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {r['bbox']!r}")
        if not isinstance(r["score"], (int, float)) or not math.isfinite(r["score"]):
            raise DataError(f"{where}: score must be a finite number, got {r['score']!r}")
        if r["image_id"] not in image_ids:
            raise DataError(f"{where}: image_id {r['image_id']!r} is not in the ground truth")
        if r["category_id"] not in category_ids:
            raise DataError(f"{where}: category_id {r['category_id']!r} is not in the ground truth")
    return results


# ---------------------------------------------------------------- output


def _fmt(v) -> str:
    if isinstance(v, float):
        return "  n/a" if math.isnan(v) else f"{v:5.3f}"  # fractions, as every report and log
    return str(v)


def _table(header, rows, total) -> str:
    cells = [[str(h) for h in header]] + [[str(row[0])] + [_fmt(v) for v in row[1:]] for row in [*rows, total]]
    widths = [max(len(r[j]) for r in cells) for j in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths)))
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *map(line, cells[1:-1]), rule, line(cells[-1])])


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
