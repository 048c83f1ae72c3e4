"""`ssdlab data`: make the synthetic demo set, and check a dataset before hours are spent on it.

    ssdlab data synth --out DIR --images N --seed S [--size PX]
        writes DIR/SHAPES/{Annotations, JPEGImages, ImageSets/Main/{train,val,trainval,test}.txt}
        (idempotent: the same parameters leave an existing set alone)
    ssdlab data check ROOT [--split SUBDIR/SPLIT ...] [--classes a,b,c] [--skip-bad] [--headers-only]
        reads every annotation and image; prints images, objects per class, size range and every
        problem. Exit 1 when there are problems (with --skip-bad: only those that training with
        data.skip_bad=true could not skip, e.g. an unknown class), 0 when clean.
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

    c = sub.add_parser("check", help="read every annotation and image of a VOC-layout dataset; with --config: "
                                     "how the default boxes cover its objects")
    c.add_argument("root", nargs="?", default=None,
                   help="dataset root holding <subdir>/ImageSets/Main, e.g. ../shared/data/bccd (default with --config: "
                        "its data root)")
    c.add_argument("--config", default=None, help="experiment YAML: report its default boxes' coverage of the "
                                                  "training boxes")
    c.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (with --config), repeatable")
    c.add_argument("--fit", action="store_true", help="with --config: fit the default boxes (prior_scales auto)")
    c.add_argument("--split", action="append", default=None, metavar="SUBDIR/SPLIT",
                   help="image set to check, repeatable (default: every split found)")
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
    return 1 if fatal else 0


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
