"""Part 5: a real training on BCCD through ssd_core.train.fit.

bccd_mobilenet_v2 from scratch, bf16, 8 loader workers, train.time_budget_s = --budget-s (120) on a time
schedule; BCCD/val is the selection split and fit evaluates it once, at the end (eval.every_epochs is huge),
so the selected checkpoint is the final one; fit then scores BCCD/test on it (data.test_sets; a fit without
that gets last.pt scored here by evaluate_checkpoint). VOC07 mAP@0.5 on val and test. Nothing is chosen on
test.
"""
from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

from benchmarks.gpu_check.data import BCCD_CONFIG, REPO, DataSpec
from benchmarks.gpu_check.plan import Plan
from benchmarks.gpu_check.report import Report


def part5_bccd_training(report: Report, section: dict, plan: Plan, device: str, data: DataSpec,
                        scratch: Path, budget_s: float) -> None:
    from ssd_core.config import load_config
    from ssd_core.train import fit

    run_dir = scratch / "bccd_run"
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = data.overrides() + [
        f"data.num_workers={plan.p5_workers}", f"train.device={device}",
        f"train.time_budget_s={budget_s}", "train.schedule.unit=time", "train.max_iters=null",
        "train.epochs=1000000", "eval.every_epochs=1000000", "eval.batch_size=32",
        f"output.dir={scratch}", f"train.log_every={20 if plan.quick else 200}"]
    if device == "cuda":
        overrides.append("train.amp=bf16")   # autocast is CUDA-only in fit; the config's value stays on a CPU
    if plan.p5_batch:
        overrides.append(f"train.batch_size={plan.p5_batch}")
    if plan.p5_image_size:
        overrides.append(f"model.image_size={plan.p5_image_size}")
    cfg = load_config(BCCD_CONFIG, overrides)
    section.update(config=str(BCCD_CONFIG.relative_to(REPO)), data=data.source, budget_s=budget_s,
                   overrides=overrides, batch=cfg.train.batch_size, image_size=cfg.model.image_size,
                   selection_split=data.split("val"), test_split=data.split("test"),
                   protocol="eval.every_epochs is huge: fit evaluates val (the selection split) once, at the "
                            "end, so the selected checkpoint is the final one; test is scored on it, once")
    report.log(f"[5] fit {cfg.name} on {data.source} ({data.split('train')}), {budget_s:.0f} s budget, batch "
               f"{cfg.train.batch_size}, {cfg.model.image_size} px, amp {cfg.train.amp} ({device}), "
               f"{plan.p5_workers} loader workers")
    t0 = time.perf_counter()
    result = fit(cfg, run_dir=run_dir)
    fit_s = time.perf_counter() - t0
    final = dict(result.final_metrics)
    test_source = "fit (data.test_sets at the selected = final checkpoint)"
    test_s = 0.0
    if "test/mAP50" not in final:   # a fit that does not score data.test_sets itself: score last.pt here
        from ssd_core.inference import evaluate_checkpoint
        t1 = time.perf_counter()
        final.update(evaluate_checkpoint(cfg, result.last_checkpoint, split="test"))
        test_s = time.perf_counter() - t1
        test_source = "evaluate_checkpoint(last.pt, split='test')"
    images = result.iterations * cfg.train.batch_size
    train_img_s = [h["perf/train_img_s"] for h in result.metrics_history if "perf/train_img_s" in h]

    def per_class(prefix: str) -> dict:
        return {k.rsplit("/", 1)[1]: v for k, v in final.items() if k.startswith(prefix + "/AP50/")}

    val_map, test_map = final.get("val/mAP50"), final.get("test/mAP50")
    if val_map is None or test_map is None:
        raise RuntimeError(f"fit reported no val/mAP50 or test/mAP50: {sorted(final)}")
    section.update(fit_wall_s=fit_s, test_eval_s=test_s, test_scored_by=test_source, iterations=result.iterations,
                   epochs=result.epochs, images_seen=images, stopped_by_budget=result.stopped_by_budget,
                   train_img_s_mean_over_epochs=statistics.mean(train_img_s) if train_img_s else None,
                   images_per_wall_s=images / fit_s, final_train_loss=final.get("train/loss"),
                   val_mAP50=val_map, val_mAP50_area=final.get("val/mAP50_area"), val_AP50=per_class("val"),
                   test_mAP50=test_map, test_mAP50_area=final.get("test/mAP50_area"), test_AP50=per_class("test"),
                   test_last_mAP50=final.get("test_last/mAP50"), best_epoch=result.best_epoch)
    for name in ("metrics.jsonl", "config.yaml"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, report.out / f"part5_{name}")
    report.log(f"[5] {result.iterations} iterations, {result.epochs} epochs in {fit_s:.1f} s "
               f"({images / fit_s:.1f} img/s over the whole fit), final train loss "
               f"{final.get('train/loss', float('nan')):.3f}")
    report.log(f"[5] val ({data.split('val')}) mAP@0.5 {val_map:.4f}  {section['val_AP50']}")
    report.log(f"[5] test ({data.split('test')}) mAP@0.5 {test_map:.4f}  {section['test_AP50']}  "
               f"(scored by {test_source})")
    report.value(f"bccd_val_mAP50_{device}", "5", val_map, "VOC07 mAP@0.5",
                 f"{data.source} {data.split('val')}, after {budget_s:.0f} s")
    report.value(f"bccd_test_mAP50_{device}", "5", test_map, "VOC07 mAP@0.5",
                 f"{data.source} {data.split('test')}, final checkpoint after {budget_s:.0f} s, "
                 f"{result.iterations} iterations")
    report.value(f"bccd_train_img_s_{device}", "5", images / fit_s, "img/s", "images seen / fit wall time")
