"""`ssdlab data`: make the synthetic demo set, and check a dataset before hours are spent on it.

    ssdlab data synth --out DIR --images N --seed S [--size PX]
        writes DIR/SHAPES/{Annotations, JPEGImages, ImageSets/Main/{train,val,trainval,test}.txt}
        (idempotent: the same parameters leave an existing set alone)
    ssdlab data check ROOT [--split SUBDIR/SPLIT ...] [--classes a,b,c] [--skip-bad] [--headers-only]
        reads every annotation and image; prints images, objects per class, size range and every
        problem. Exit 1 when there are problems (with --skip-bad: only those that training with
        data.skip_bad=true could not skip, e.g. an unknown class), 0 when clean.
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

    c = sub.add_parser("check", help="read every annotation and image of a VOC-layout dataset")
    c.add_argument("root", help="dataset root holding <subdir>/ImageSets/Main, e.g. ../shared/data/bccd")
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

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    report = check_dataset(args.root, args.split, class_names=classes, decode=not args.headers_only)
    print(report.format())
    fatal = report.fatal(skip_bad=args.skip_bad)
    if args.skip_bad and report.problems and not fatal:
        print(f"  all {len(report.problems)} problems are skipped or repaired with data.skip_bad=true")
    return 1 if fatal else 0
