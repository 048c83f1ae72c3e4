"""`ssdlab init PATH [--name NAME] [--force]`: start on a dataset you bring.

PATH is what you downloaded: a YOLO data.yaml (or its folder), a COCO instances .json (or a Roboflow COCO
export folder), a VOC devkit root or a folder of LabelImg .xml files. Writes experiments/configs/NAME.yaml
and sweeps/NAME_ablation.yaml (experiments/starter.py says what is chosen and how) and prints each choice
with its reason; `ssdlab sweep sweeps/NAME_ablation.yaml` then runs as is.
"""
from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("init", help="write a config and a starter ablation sweep for a dataset you bring")
    p.add_argument("path", help="a YOLO data.yaml, a COCO .json or export folder, a VOC root or LabelImg folder")
    p.add_argument("--name", default=None, help="names the config, the sweep and the MLflow experiment "
                                                "(default: the dataset's folder name)")
    p.add_argument("--force", action="store_true", help="overwrite the config and sweep of that name")
    p.add_argument("--root", default=".", help="the folder holding experiments/configs and sweeps (default: .)")
    p.add_argument("--no-measure", action="store_true", help="do not time a training iteration here")
    p.set_defaults(func=init)


def init(args) -> int:
    import warnings

    from experiments.starter import default_name, plan_starter, refuse_overwrite, starter_paths, write_starter
    from ssd_core.data import DataWarning
    from ssd_core.data.detect import detect_layout

    warnings.simplefilter("ignore", DataWarning)  # repaired and dropped boxes: `ssdlab data check` lists them

    name = args.name or default_name(detect_layout(args.path).root)
    refuse_overwrite(starter_paths(args.root, name), args.force)  # before minutes of fitting and timing
    print(f"ssdlab init {args.path} --name {name}")
    starter = plan_starter(args.path, name, measure=not args.no_measure, say=lambda line: print(f"  {line}"))
    config, sweep = write_starter(starter, args.root, force=args.force)
    print(f"wrote {config} and {sweep}")
    print(f"next: ssdlab data check {args.path}   |   ssdlab sweep {sweep}   |   ssdlab report --sweep "
          f"{starter.sweep['name']}")
    return 0
