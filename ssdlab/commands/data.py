"""`ssdlab data`: make the synthetic demo set, and check a dataset before hours are spent on it.

    ssdlab data synth --out DIR --images N --seed S [--size PX]
        writes DIR/SHAPES/{Annotations, JPEGImages, ImageSets/Main/{train,val,trainval,test}.txt}
        (idempotent: the same parameters leave an existing set alone)
    ssdlab data check PATH [--split SUBDIR/SPLIT ...] [--classes a,b,c] [--skip-bad] [--headers-only]
        PATH: a YOLO data.yaml (or its folder), a COCO instances .json or export folder, a VOC devkit root
        or a LabelImg folder (ssd_core/data/detect.py finds which; --split names VOC image sets instead).
        Reads every annotation and image; prints the format and splits found, images, objects per class,
        size range, every problem, the repairs (boxes clipped, duplicates dropped), images without
        objects, duplicated boxes, and how the paper's default boxes cover the training boxes. Exit 1 when
        there are problems (with --skip-bad: only those that training with data.skip_bad=true could not
        skip, e.g. an unknown class), 0 when clean.
    ssdlab data check --config CFG [-o key=value ...] [--fit]
        how the config's default boxes cover its training boxes (ssd_core/prior_fit/): the share with
        best IoU >= 0.5, per class, per size, the map each class is matched on, beside the paper's VOC
        boxes; --fit also fits them (model.prior_scales: auto) and prints the fitted values and coverage.
"""
from __future__ import annotations

import time


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="synthetic demo data and dataset checks")
    sub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    s = sub.add_parser("synth", help="generate the synthetic shapes set in VOC format")
    s.add_argument("--out", required=True, help="output root; the set goes to OUT/SHAPES")
    s.add_argument("--images", type=int, default=300, help="number of images (default 300)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--size", type=int, default=256, help="longer image side in pixels (default 256)")
    s.set_defaults(func=synth)

    c = sub.add_parser("check", help="read every annotation and image of a dataset (VOC, COCO, YOLO); with "
                                     "--config: how the default boxes cover its objects")
    c.add_argument("root", nargs="?", default=None, metavar="PATH",
                   help="a YOLO data.yaml, a COCO .json or export folder, a VOC root (e.g. ../shared/data/bccd) or a "
                        "LabelImg folder (default with --config: its data root)")
    c.add_argument("--config", default=None, help="experiment YAML: report its default boxes' coverage of the "
                                                  "training boxes")
    c.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (with --config), repeatable")
    c.add_argument("--fit", action="store_true", help="with --config: fit the default boxes (prior_scales auto)")
    c.add_argument("--split", action="append", default=None, metavar="SUBDIR/SPLIT",
                   help="VOC image set to check, repeatable (default: the splits found)")
    c.add_argument("--classes", default=None, help="comma-separated class names (default: VOC or inferred)")
    c.add_argument("--skip-bad", action="store_true",
                   help="tolerate what data.skip_bad=true tolerates (unreadable images, degenerate boxes)")
    c.add_argument("--headers-only", action="store_true", help="read image headers only (faster, misses truncation)")
    c.set_defaults(func=check)


def synth(args) -> int:
    from ssd_core.errors import DataError
    from ssd_core.synth import SUBDIR, ensure_synthetic

    if args.images < 1 or args.size < 32:
        raise DataError(f"{args.out}: --images must be >= 1 and --size >= 32 (got {args.images}, {args.size})")
    start = time.perf_counter()
    root = ensure_synthetic(args.out, images=args.images, seed=args.seed, image_size=args.size)
    print(f"synthetic shapes: {args.images} images (seed {args.seed}, {args.size} px) in {root / SUBDIR} "
          f"[{time.perf_counter() - start:.1f} s]; image sets {SUBDIR}/train, {SUBDIR}/val, {SUBDIR}/test")
    return 0


def check(args) -> int:
    from ssd_core.data import check_dataset
    from ssd_core.errors import UserError

    if args.config is not None:
        return coverage(args)
    if args.root is None:
        raise UserError("ssdlab data check: give a dataset ROOT, or --config CFG for the default boxes' coverage")
    if args.fit or args.override:
        raise UserError("ssdlab data check: --fit and -o need --config CFG")
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    report = check_dataset(args.root, args.split, class_names=classes, decode=not args.headers_only)
    print(report.format())
    fatal = report.fatal(skip_bad=args.skip_bad)
    if args.skip_bad and report.problems and not fatal:
        print(f"  all {len(report.problems)} problems are skipped or repaired with data.skip_bad=true")
    if args.split is None and not report.fatal(skip_bad=True):  # the data can be read: what covers it
        paper_coverage(args.root, classes)
    return 1 if fatal else 0


def paper_coverage(path, classes) -> None:
    """How the paper's SSD300 default boxes (VOC scales) cover the training boxes the dataset at `path` holds."""
    import warnings

    from ssd_core import prior_fit as PF
    from ssd_core.config import validate_config
    from ssd_core.data import DataWarning
    from ssd_core.data.detect import detect_layout

    layout = detect_layout(path)
    data = {k.split(".", 1)[1]: v for k, v in layout.data_keys().items() if v not in (None, [])}
    cfg = validate_config({"data": {**data, **({"class_names": classes} if classes else {}), "skip_bad": True},
                           "model": {"backbone": "vgg16", "image_size": 300}}, source=str(path))
    from ssd_core.build import build_splits
    from ssd_core.errors import UserError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # listed above
        try:
            boxes, labels, names = PF.training_boxes(cfg, build_splits(cfg, transform=False)[0]["train"])
        except UserError as exc:
            print(f"  default-box coverage: not measured ({exc})")
            return
    if len(boxes) == 0:
        return
    print(PF.coverage(PF.spec_of(cfg), boxes, labels, names).format("the paper's SSD300 default boxes (VOC scales), "
                                                                    "300 px"))
    print(f"  `ssdlab init {path}` fits the default boxes and picks the input size and stride that cover them")


def coverage(args) -> int:
    """The config's default boxes against its training boxes, beside the paper's VOC boxes (and, with --fit,
    the fitted ones)."""
    from ssd_core import prior_fit as PF
    from ssd_core.config import apply_overrides, load_config

    over = list(args.override) + ([f"data.root={args.root}"] if args.root else [])
    cfg = load_config(args.config, over)
    boxes, labels, names = PF.training_boxes(cfg)
    paper = apply_overrides(cfg, {"model.prior_scales": "voc", "model.prior_first_ratio": None,
                                  "model.prior_min_ratio": None, "model.prior_max_ratio": None,
                                  "model.prior_sizes": None, "model.prior_aspect": "paper",
                                  "model.prior_aspect_ratios": None})
    S = cfg.model.image_size
    rows = [("paper VOC default boxes", paper)]
    if cfg.model.prior_scales != "auto" or cfg.model.prior_sizes is not None:
        rows.append((f"{args.config} default boxes", cfg))
    if args.fit or cfg.model.prior_scales == "auto":
        fit_cfg = cfg if cfg.model.prior_scales == "auto" else apply_overrides(cfg, {
            "model.prior_scales": "auto", "model.prior_first_ratio": None, "model.prior_min_ratio": None,
            "model.prior_max_ratio": None, "model.prior_sizes": None})
        fitted = PF.resolve_priors(fit_cfg)
        sizes = fitted.model.prior_sizes
        text = ", ".join(f"{v:.4f} ({v * S:.0f} px)" for v in sizes)
        ratios = fitted.model.prior_aspect_ratios
        print(f"fitted model.prior_sizes: [{', '.join(f'{v:.6g}' for v in sizes)}]   # {text}")
        if ratios is not None:
            print(f"fitted model.prior_aspect_ratios: {ratios}")
        rows.append(("fitted default boxes (model.prior_scales: auto)", fitted))
    for title, c in rows:
        print(PF.coverage(PF.spec_of(c), boxes, labels, names).format(f"{title}, {S} px"))
    return 0
