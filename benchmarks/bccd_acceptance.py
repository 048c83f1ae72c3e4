"""BCCD acceptance: train on BCCD/train and test on BCCD/test within a CPU wall-clock budget, side by side
with torchvision's ssdlite320_mobilenet_v3_large under its own reference recipe.

    python -m benchmarks.bccd_acceptance [--budget-min 30] [--quick] [--data-root PATH]
                                         [--config experiments/configs/bccd_mobilenet_v2.yaml]
                                         [--threads 1] [--json OUT]

Ours: `ssd_core.train.fit` on the config (default bccd_mobilenet_v2.yaml), with `train.max_iters`
set so the schedule ends inside the budget and `train.time_budget_s` as a hard stop.
Reference: `ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None)` (nothing is
downloaded), torchvision's detection-reference recipe for it: "ssdlite" augmentation (RandomIoUCrop,
horizontal flip), SGD momentum 0.9, weight decay 4e-5, lr 0.15 at batch 192 scaled linearly to our
batch, linear warmup then cosine annealing (per iteration here, so it ends inside the budget), its
own post-processing (score 0.001, NMS 0.55, 300 per image).

Both sides: the same images and annotations (ssd_core.data.VOCDataset, EXIF-upright), the same
batch size, the same training wall-clock budget (measured after a 3-step calibration sets the
iteration count), then the same VOC07 11-point mAP@0.5 code (ssd_core.evaluate.evaluate_voc) on
BCCD/test. The two run at the same time in two processes with --threads threads each, so load from
other users hits both alike. --quick is a 1-minute budget each (a smoke run, not a result).
Prints both mAPs and the ratio (ours / reference).
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
CALIBRATION_STEPS = 5


def _data_root(arg: str | None) -> Path:
    root = arg or os.environ.get("SSDLAB_DATA_ROOT") or str(REPO.parent / "shared" / "data" / "bccd")
    return Path(root)


# ---------------------------------------------------------------- ours


def run_ours(config: str, root: str, budget_s: float, threads: int, out_dir: str) -> dict:
    import torch
    torch.set_num_threads(threads)
    from ssd_core.config import apply_overrides, load_config
    from ssd_core.data import make_loader
    from ssd_core.loss import MultiBoxLoss
    from ssd_core.train import build_dataset, build_model, build_optimizer, fit, seed_everything

    cfg = load_config(config, [f"data.root={root}", "data.val_sets=[BCCD/test]", "eval.every_epochs=1000000",
                               "train.device=cpu", f"output.dir={out_dir}"])
    seed_everything(cfg.train.seed)
    train_ds = build_dataset(cfg, "train", train=True)
    loader = make_loader(train_ds, cfg.train.batch_size, shuffle=True, seed=cfg.train.seed)
    model = build_model(cfg, len(train_ds.class_names) + 1)
    opt, loss_fn = build_optimizer(cfg, model), MultiBoxLoss()

    def step(batch) -> None:
        loc, conf = model(model.normalize(batch.images))
        loss = loss_fn(loc, conf, model.priors, batch.boxes, batch.labels).total
        opt.zero_grad()
        loss.backward()
        opt.step()

    s_per_iter = _calibrate(step, loader)
    iters = max(1, int(0.95 * budget_s / s_per_iter))
    cfg = apply_overrides(cfg, {"train.max_iters": iters, "train.time_budget_s": budget_s,
                                "train.warmup_iters": min(cfg.train.warmup_iters, iters // 10)})
    t0 = time.perf_counter()
    result = fit(cfg, run_dir=Path(out_dir) / "ours")
    final = result.final_metrics
    return {"name": f"ssdlab {cfg.name}", "mAP50": final.get("val/mAP50"), "mAP50_area": final.get("val/mAP50_area"),
            "AP50": {k.rsplit("/", 1)[1]: v for k, v in final.items() if k.startswith("val/AP50/")},
            "iterations": result.iterations, "planned_iterations": iters, "s_per_iter_calibrated": s_per_iter,
            "wall_s": time.perf_counter() - t0, "params": sum(p.numel() for p in model.parameters())}


def _calibrate(step, loader) -> float:
    """Seconds per training step: one warm-up step, then CALIBRATION_STEPS timed; not counted in the budget."""
    batches = iter(loader)
    step(next(batches))
    t = time.perf_counter()
    for _ in range(CALIBRATION_STEPS):
        step(next(batches))
    return (time.perf_counter() - t) / CALIBRATION_STEPS


# ---------------------------------------------------------------- reference


class _ReferenceData:
    """Our VOCDataset's images and annotations, through torchvision's v2 "ssdlite" preset."""

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


def run_reference(config: str, root: str, budget_s: float, threads: int, out_dir: str) -> dict:
    import torch
    torch.set_num_threads(threads)
    from torch.utils.data import DataLoader
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large
    from ssd_core.config import load_config
    from ssd_core.data import VOCDataset
    from ssd_core.evaluate import evaluate_voc, ground_truth_from_dataset
    from ssd_core.train import seed_everything

    cfg = load_config(config, [f"data.root={root}"])
    seed_everything(cfg.train.seed)
    names = cfg.data.class_names
    train_set = VOCDataset(root, cfg.data.train_sets, class_names=names)
    test_set = VOCDataset(root, ["BCCD/test"], class_names=names)
    batch = cfg.train.batch_size
    collate = lambda items: tuple(zip(*items))  # noqa: E731
    loader = DataLoader(_ReferenceData(train_set, train=True), batch_size=batch, shuffle=True, drop_last=True,
                        collate_fn=collate, generator=torch.Generator().manual_seed(cfg.train.seed))
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=len(train_set.class_names) + 1)
    lr = 0.15 * batch / 192  # the reference's lr 0.15 at 8 GPUs x 24 images, scaled linearly
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=4e-5)

    def step(items, factor: float = 1.0) -> None:
        images, targets, _ = items
        for g in opt.param_groups:
            g["lr"] = lr * factor
        losses = model(list(images), list(targets))
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"reference: non-finite loss {losses}")
        opt.zero_grad()
        loss.backward()
        opt.step()

    model.train()
    s_per_iter = _calibrate(step, loader)
    iters = max(1, int(0.95 * budget_s / s_per_iter))
    warmup = min(1000, len(loader) - 1, iters // 10)
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=len(train_set.class_names) + 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=4e-5)
    seed_everything(cfg.train.seed)
    model.train()
    t0, it = time.perf_counter(), 0
    while it < iters and time.perf_counter() - t0 < budget_s:
        for items in loader:
            warm = 0.001 + (1 - 0.001) * it / warmup if it < warmup else 1.0
            step(items, warm * 0.5 * (1 + math.cos(math.pi * it / iters)))
            it += 1
            if it >= iters or time.perf_counter() - t0 >= budget_s:
                break

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
            "AP50": voc["AP50"], "iterations": it, "planned_iterations": iters, "s_per_iter_calibrated": s_per_iter,
            "wall_s": time.perf_counter() - t0, "params": sum(p.numel() for p in model.parameters())}


# ---------------------------------------------------------------- driver


def _child(fn_name: str, args: tuple, queue) -> None:
    try:
        queue.put((fn_name, globals()[fn_name](*args)))
    except BaseException as exc:  # report, do not hang the parent
        queue.put((fn_name, {"error": f"{type(exc).__name__}: {exc}"}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-min", type=float, default=30.0, help="training wall-clock budget per model (minutes)")
    p.add_argument("--quick", action="store_true", help="1 minute each: checks that everything runs")
    p.add_argument("--data-root", default=None, help="folder holding BCCD/ (default $SSDLAB_DATA_ROOT or ../shared/data/bccd)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--threads", type=int, default=1, help="torch threads per model (both run at once)")
    p.add_argument("--out", default=str(REPO / "runs" / "bccd_acceptance"), help="run folder")
    p.add_argument("--json", default=None, help="write both results here")
    args = p.parse_args(argv)
    budget_s = 60.0 if args.quick else args.budget_min * 60
    root = _data_root(args.data_root)
    if not (root / "BCCD" / "Annotations").is_dir():
        print(f"bccd_acceptance: BCCD not found at {root} (expected {root}/BCCD/Annotations); "
              f"pass --data-root or set SSDLAB_DATA_ROOT", file=sys.stderr)
        return 2
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    print(f"BCCD acceptance: budget {budget_s / 60:.1f} min per model, {args.threads} thread(s) each, "
          f"both at once; data {root}", flush=True)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    common = (args.config, str(root), budget_s, args.threads, args.out)
    procs = [ctx.Process(target=_child, args=(name, common, queue)) for name in ("run_ours", "run_reference")]
    for proc in procs:
        proc.start()
    results = dict(queue.get() for _ in procs)
    for proc in procs:
        proc.join()
    ours, ref = results["run_ours"], results["run_reference"]
    for r in (ours, ref):
        if "error" in r:
            print(f"failed: {r['error']}", file=sys.stderr)
    if "error" in ours or "error" in ref:
        return 1
    print(f"{'model':<44} {'params':>9} {'iters':>6} {'wall s':>8} {'mAP50 VOC07':>12} {'area':>6}")
    for r in (ours, ref):
        print(f"{r['name']:<44} {r['params']:>9,} {r['iterations']:>6} {r['wall_s']:>8.0f} "
              f"{100 * r['mAP50']:>12.1f} {100 * r['mAP50_area']:>6.1f}")
    ratio = ours["mAP50"] / ref["mAP50"] if ref["mAP50"] else float("inf")
    print(f"RESULT bccd_acceptance ours_mAP50 {100 * ours['mAP50']:.1f} ref_mAP50 {100 * ref['mAP50']:.1f} "
          f"ratio {ratio:.2f} budget_min {budget_s / 60:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"budget_s": budget_s, "ours": ours, "reference": ref,
                                               "ratio": ratio}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
