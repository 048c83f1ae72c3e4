"""Acceptance on any dataset: train on its training split and test on its test split within a CPU wall-clock
budget, side by side with torchvision's ssdlite320_mobilenet_v3_large under its own reference recipe.

    python -m benchmarks.acceptance [--data PATH] [--config CFG] [--budget-min 30] [--seeds 0 1 2] [--quick]
                                    [--threads 1] [--json OUT]

--data: a dataset in any format ssdlab reads (a YOLO data.yaml, a COCO .json or export folder, a VOC root or a
LabelImg folder); default BCCD (../shared/data/bccd, or $SSDLAB_DATA_ROOT) with its shipped config. --config:
our experiment config; default for --data: the one `ssdlab init` writes for it (experiments/starter.py,
planned in the run folder, nothing written to experiments/), else experiments/configs/bccd_mobilenet_v2.yaml.

Ours: `ssd_core.train.fit` on the config with `train.time_budget_s` = the budget and `train.schedule.unit: time`,
so its warmup + cosine schedule spans exactly the budget; nothing is selected (no val split: the final weights
are the model, as for the reference); the config's test split (data.test_sets, or its data.test_holdout slice)
is the reported one. Reference: `ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)` (nothing is
downloaded), torchvision's detection-reference recipe for it: "ssdlite" augmentation (RandomIoUCrop,
horizontal flip), SGD momentum 0.9, weight decay 4e-5, lr 0.15 at batch 192 scaled linearly to our
batch, the reference's first-epoch linear warmup, then cosine annealing over the same wall-clock budget,
its own post-processing (score 0.001, NMS 0.55, 300 per image). Precision: both train at the config's
`train.amp` as resolved for this CPU (ssd_core.precision: bf16 autocast + channels_last where the CPU has
bf16 instructions); the reference wraps its model call in autocast as torchvision's reference script does
with --amp (the forward and its loss), and both score the test split in fp32.

Both sides: the same images and annotations (ssd_core.build.build_dataset: any format, EXIF-upright), the same
batch size and seed, the same training wall-clock budget, then the same VOC07 11-point mAP@0.5 code
(ssd_core.evaluate.evaluate_voc) on the test split. The two run at the same time in two processes with
--threads threads each, so load from other users hits both alike; seeds run one pair after another.
--quick is a 1-minute budget each (a smoke run, not a result). Prints every run, the mean mAPs,
their ratio (ours / reference) and how many seeds ours won.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "experiments" / "configs" / "bccd_mobilenet_v2.yaml"


def _bccd_root() -> Path:
    return Path(os.environ.get("SSDLAB_DATA_ROOT") or str(REPO.parent / "shared" / "data" / "bccd"))


def resolve_config(data: str | None, config: str | None, out_dir: str) -> tuple[str, str]:
    """(config file, data root) the pair trains on: --config, else `ssdlab init`'s plan for --data (written to
    out_dir), else the shipped BCCD config; the data root is --data when given, else the config's own."""
    if config is None and data is not None:
        from experiments.starter import plan_starter, write_starter

        starter = plan_starter(data, "acceptance", measure=False, say=lambda line: print(f"  init: {line}"))
        config = str(write_starter(starter, out_dir, force=True)[0])
    config = config or str(DEFAULT_CONFIG)
    if data is None:
        from ssd_core.config import load_config, resolve_data_root
        cfg = load_config(config)
        data = str(_bccd_root() if cfg.data.default_root and not cfg.data.root else resolve_data_root(cfg))
    return config, str(data)


# ---------------------------------------------------------------- ours


def ours_config(config: str, root: str, budget_s: float, out_dir: str, seed: int):
    """The config `run_ours` trains: nothing is selected (no val split: the final weights are the model,
    as for the reference); the config's test split is the reported one (`test/...`, scored once at the end)."""
    from ssd_core.config import load_config
    from ssd_core.errors import ConfigError

    cfg = load_config(config, [f"data.root={root}", "data.val_sets=[]", "data.holdout=null",
                               "train.device=cpu", f"output.dir={out_dir}", f"train.seed={seed}",
                               "train.max_iters=null", "train.epochs=1000000", f"train.time_budget_s={budget_s}",
                               "train.schedule.unit=time"])
    if not cfg.data.test_sets and cfg.data.test_holdout is None:
        raise ConfigError(f"{config}: no test split (data.test_sets or data.test_holdout): nothing to report")
    return cfg


def run_ours(config: str, root: str, budget_s: float, threads: int, out_dir: str, seed: int) -> dict:
    import shutil

    import torch
    torch.set_num_threads(threads)
    from ssd_core import metrics as M
    from ssd_core import precision
    from ssd_core.prior_fit import resolve_priors
    from ssd_core.train import build_model, fit

    cfg = ours_config(config, root, budget_s, out_dir, seed)
    run_dir = Path(out_dir) / f"ours-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    result = fit(cfg, run_dir=run_dir)
    wall_s = time.perf_counter() - t0
    final = result.final_metrics
    fitted = resolve_priors(cfg)  # model.prior_scales: auto -> the default boxes fit trained with
    params = sum(p.numel() for p in build_model(fitted, len(cfg.data.class_names) + 1).parameters())
    return {"name": f"ssdlab {cfg.name}", "mAP50": final.get(M.map50(M.TEST)),
            "mAP50_area": final.get(M.map50_area(M.TEST)),
            "AP50": {k.rsplit("/", 1)[1]: v for k, v in final.items() if k.startswith(M.class_ap50_prefix(M.TEST))},
            "iterations": result.iterations, "wall_s": wall_s, "params": params,
            "config": str(config), "seed": seed,
            "precision": precision.resolve(cfg.train, torch.device("cpu")).describe()}


# ---------------------------------------------------------------- reference


class _ReferenceData:
    """Our dataset's images and annotations (any format), through torchvision's v2 "ssdlite" preset."""

    def __init__(self, dataset, train: bool):
        import torch
        from torchvision.transforms import v2
        self.dataset = dataset
        steps = [v2.RandomIoUCrop(), v2.RandomHorizontalFlip(p=0.5)] if train else []
        self.transform = v2.Compose([*steps, v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                                     v2.SanitizeBoundingBoxes()])

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        import torch
        from torchvision import tv_tensors

        from ssd_core.imageio import load_rgb, open_image
        img = load_rgb(open_image(self.dataset.image_path(i)))
        t = self.dataset.annotation(i)
        keep = ~t.difficult
        target = {"boxes": tv_tensors.BoundingBoxes(t.boxes[keep], format="XYXY", canvas_size=(img.height, img.width)),
                  "labels": t.labels[keep]}
        image, target = self.transform(img, target)
        return image, {"boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"]}, i


def run_reference(config: str, root: str, budget_s: float, threads: int, out_dir: str, seed: int) -> dict:
    import torch
    torch.set_num_threads(threads)
    from torch.utils.data import DataLoader
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    from ssd_core import precision
    from ssd_core.build import build_dataset
    from ssd_core.evaluate import evaluate_voc, ground_truth_from_dataset
    from ssd_core.train import seed_everything

    cfg = ours_config(config, root, budget_s, out_dir, seed)  # the same splits as ours
    seed_everything(seed)
    train_set = build_dataset(cfg, "train", train=False, transform=False)
    test_set = build_dataset(cfg, "test", train=False, class_names=train_set.class_names, transform=False)
    batch = cfg.train.batch_size
    collate = lambda items: tuple(zip(*items))  # noqa: E731
    loader = DataLoader(_ReferenceData(train_set, train=True), batch_size=batch, shuffle=True, drop_last=True,
                        collate_fn=collate, generator=torch.Generator().manual_seed(seed))
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=len(train_set.class_names) + 1)
    plan = precision.resolve(cfg.train, torch.device("cpu"))  # the machine's best precision, as ours gets it
    if plan.channels_last:
        model = model.to(memory_format=torch.channels_last)
    lr = 0.15 * batch / 192  # the reference's lr 0.15 at 8 GPUs x 24 images, scaled linearly
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=4e-5)
    warmup = min(1000, len(loader) - 1)  # the reference's first-epoch linear warmup from lr/1000

    def step(items, factor: float) -> None:
        images, targets, _ = items
        for g in opt.param_groups:
            g["lr"] = lr * factor
        with precision.autocast(cfg.train, torch.device("cpu")):
            losses = model(list(images), list(targets))
        loss = sum(float_loss.float() for float_loss in losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"reference: non-finite loss {losses}")
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.train()
    t0, it = time.perf_counter(), 0
    while time.perf_counter() - t0 < budget_s:
        for items in loader:
            elapsed = time.perf_counter() - t0
            if elapsed >= budget_s:
                break
            warm = 0.001 + (1 - 0.001) * it / warmup if it < warmup else 1.0
            step(items, warm * 0.5 * (1 + math.cos(math.pi * elapsed / budget_s)))  # cosine over the budget
            it += 1

    model.eval()
    test_loader = DataLoader(_ReferenceData(test_set, train=False), batch_size=batch, collate_fn=collate)
    det = {"det_image": [], "det_label": [], "det_score": [], "det_boxes": []}
    with torch.inference_mode():
        for images, _, indices in test_loader:
            for out, i in zip(model(list(images)), indices):
                det["det_image"].append(torch.full_like(out["labels"], i))
                det["det_label"].append(out["labels"])
                det["det_score"].append(out["scores"])
                det["det_boxes"].append(out["boxes"])
    det = {k: torch.cat(v).numpy() for k, v in det.items()}
    voc = evaluate_voc(**det, **ground_truth_from_dataset(test_set), class_names=test_set.class_names)
    return {"name": "torchvision ssdlite320_mobilenet_v3_large", "mAP50": voc["mAP50"], "mAP50_area": voc["mAP50_area"],
            "AP50": voc["AP50"], "iterations": it, "wall_s": time.perf_counter() - t0,
            "params": sum(p.numel() for p in model.parameters()), "seed": seed, "precision": plan.describe()}


# ---------------------------------------------------------------- driver


def _child(fn_name: str, args: tuple, queue) -> None:
    import warnings

    from ssd_core.data import DataWarning
    warnings.simplefilter("ignore", DataWarning)  # repaired boxes: `ssdlab data check` lists them
    try:
        queue.put((fn_name, globals()[fn_name](*args)))
    except BaseException as exc:  # report, do not hang the parent
        queue.put((fn_name, {"error": f"{type(exc).__name__}: {exc}"}))


def run_pair(args, root: Path, budget_s: float, seed: int) -> tuple[dict, dict]:
    """Ours and the reference at the same time, one process each."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    common = (args.config, str(root), budget_s, args.threads, args.out, seed)
    procs = [ctx.Process(target=_child, args=(name, common, queue)) for name in ("run_ours", "run_reference")]
    for proc in procs:
        proc.start()
    results = {}
    while len(results) < len(procs):
        name, result = queue.get()
        results[name] = result
        if "error" in result:  # the pair is void: do not let the other run out its budget
            for proc in procs:
                proc.terminate()
            for other in ("run_ours", "run_reference"):
                results.setdefault(other, {"error": f"{other}: stopped because the other run failed"})
    for proc in procs:
        proc.join()
    return results["run_ours"], results["run_reference"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="a dataset in any format ssdlab reads (default: BCCD)")
    p.add_argument("--config", default=None, help="our experiment config (default: ssdlab init's for --data, else "
                                                  "the shipped BCCD config)")
    p.add_argument("--budget-min", type=float, default=30.0, help="training wall-clock budget per model (minutes)")
    p.add_argument("--quick", action="store_true", help="1 minute each: checks that everything runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="one pair of runs per seed, one after another")
    p.add_argument("--threads", type=int, default=1, help="torch threads per model (both run at once)")
    p.add_argument("--out", default=str(REPO / "runs" / "acceptance"), help="run folder")
    p.add_argument("--json", default=None, help="write all results here")
    args = p.parse_args(argv)
    budget_s = 60.0 if args.quick else args.budget_min * 60
    try:  # fail now, not after the reference has trained for the whole budget
        args.config, root = resolve_config(args.data, args.config, args.out)
        cfg = ours_config(args.config, root, budget_s, args.out, args.seeds[0])
        from ssd_core.build import build_dataset
        sizes = {s: len(build_dataset(cfg, s, train=False, transform=False)) for s in ("train", "test")}
    except Exception as exc:
        print(f"acceptance: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    print(f"acceptance: budget {budget_s / 60:.1f} min per model, {args.threads} thread(s) each, "
          f"both at once; seeds {args.seeds}; data {root} ({cfg.data.format}: train {sizes['train']} images, test "
          f"{sizes['test']}); config {args.config} ({cfg.model.image_size} px, stride {cfg.model.output_stride})",
          flush=True)
    print(f"{'seed':>4} {'model':<44} {'params':>9} {'iters':>6} {'wall s':>7} {'mAP50':>6} {'area':>6}  AP50 per class")
    pairs = []
    for seed in args.seeds:
        ours, ref = run_pair(args, root, budget_s, seed)
        failed = [r["error"] for r in (ours, ref) if "error" in r]
        if failed:
            print("failed: " + "; ".join(failed), file=sys.stderr)
            return 1
        for r in (ours, ref):
            per_class = " ".join(f"{k} {v:.3f}" for k, v in r["AP50"].items())
            print(f"{seed:>4} {r['name']:<44} {r['params']:>9,} {r['iterations']:>6} {r['wall_s']:>7.0f} "
                  f"{r['mAP50']:>6.3f} {r['mAP50_area']:>6.3f}  {per_class}", flush=True)
            print(f"{'':>4} {'  precision: ' + r.get('precision', '?')}", flush=True)
        pairs.append((ours, ref))
    ours_map = [o["mAP50"] for o, _ in pairs]
    ref_map = [r["mAP50"] for _, r in pairs]
    wins = sum(o > r for o, r in zip(ours_map, ref_map))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    ratio = mean(ours_map) / mean(ref_map) if mean(ref_map) else float("inf")
    print(f"RESULT acceptance data {Path(root).name} ours_mAP50 {mean(ours_map):.3f} ref_mAP50 {mean(ref_map):.3f} "
          f"(means over {len(pairs)} seed(s)) ratio {ratio:.2f} ours_wins {wins}/{len(pairs)} budget_min {budget_s / 60:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"data": root, "config": args.config, "budget_s": budget_s,
                                               "seeds": args.seeds, "ratio": ratio, "wins": wins,
                                               "pairs": [{"ours": o, "reference": r} for o, r in pairs]},
                                              indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
