"""The one training loop: `fit(cfg, callbacks)`. The CLI (`ssdlab train`) and Ray Tune workers both call it.

Recipe (paper section 3): SGD with momentum (AdamW as an option), weight decay (optionally not on
norms and biases), linear warmup, then a multistep or cosine schedule counted in iterations, epochs
or wall-clock time (schedule.py); the paper's SSD300 is 120k iterations with the lr divided by 10 at
80k and 100k. Options: gradient clipping, mixed precision (train.amp: bf16 autocast on CUDA and on CPUs with
bf16 instructions, fp16 with a GradScaler on CUDA; ssd_core/precision.py), channels_last, torch.compile, knowledge distillation from a teacher checkpoint (config `distill`,
ssd_core/distill.py; off by default). Seeding is deterministic (torch, numpy, Python, the loader's generator).

Every `eval.every_epochs` epochs the model is scored on the selection split (`val/...`, the VOC
metric, and COCO AP on COCO data); best.pt keeps the best such epoch. When training ends, the reported
split (data.test_sets) is scored once at that selected checkpoint (`test/...`) and at the final weights
(`test_last/...`), and the selected checkpoint's test detections are saved as test_detections.npz
(ssd_core.metrics names every metric). Nothing is ever chosen on the test split.

Metrics reach the outside world only through callbacks (ssd_core never imports Ray or MLflow):

    on_fit_start(cfg, run_dir) ; on_epoch_end(epoch, metrics, run_dir) ; on_fit_end(result)

`run_dir/last.pt` and `run_dir/best.pt` (checkpoint.TrainState) are written atomically at the end of each
epoch and hold everything needed to resume to the same final weights (`resume=True`). A non-finite loss
raises NonFiniteLossError before the optimizer step, so the last good checkpoint stays intact. Exact
resume holds for data.num_workers = 0 and for workers (they are re-seeded each epoch from the loader's
generator).
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch
from torch import nn

from ssd_core import metrics as M
from ssd_core import precision
from ssd_core import rundir as RD
from ssd_core.build import build_model, build_optimizer, build_splits, default_run_dir, resolve_device
from ssd_core.data.record import split_record
from ssd_core.checkpoint import TrainState, save_checkpoint
from ssd_core.config import ExperimentConfig, to_yaml
from ssd_core.errors import ConfigError, NonFiniteLossError, disk_full
from ssd_core.prior_fit import coverage, resolve_priors, training_boxes
from ssd_core.inference import autocast, evaluate_model, prepare, score_selected, score_test
from ssd_core.schedule import Progress, lr_factor



class Callback:
    """Hooks `fit` calls; every method is optional."""

    def on_fit_start(self, cfg: ExperimentConfig, run_dir: Path) -> None: ...

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], run_dir: Path) -> None: ...

    def on_fit_end(self, result: "FitResult") -> None: ...


@dataclass
class FitResult:
    best_metric: Optional[float]          # the val eval.metric of the selected epoch (None: no val split)
    metrics_history: list[dict[str, float]]  # one dict per epoch, with "epoch" and "iteration"
    run_dir: Path
    best_epoch: Optional[int] = None
    epochs: int = 0                       # epochs completed
    iterations: int = 0                   # optimizer steps taken
    final_metrics: dict[str, float] = field(default_factory=dict)
    stopped_by_budget: bool = False       # train.time_budget_s ran out
    metric_name: str = M.map50(M.VAL)
    test_metrics: dict[str, float] = field(default_factory=dict)  # reported split, selected checkpoint

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / RD.BEST

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / RD.LAST


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """Each epoch re-seeds torch, numpy and Python from (seed, epoch): the augmentation streams
    (seeded from torch.initial_seed() in ssd_core.augment) then depend on the epoch alone, which is
    what makes a resumed run reach the same weights."""
    return (seed * 1_000_003 + epoch + 1) % 2**63


# ---------------------------------------------------------------- one epoch


@dataclass
class Trainer:
    """What one epoch of training needs: the model (and its compiled twin), the optimisation, the data."""

    cfg: ExperimentConfig
    model: nn.Module
    step_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    loader: torch.utils.data.DataLoader
    device: torch.device
    distiller: Optional[Callable] = None  # ssd_core.distill.Distiller when distill.teacher is set

    def train_one_epoch(self, state: TrainState, total_iters: int, progress: Progress,
                        over_budget: Callable[[], bool], last_path: Path) -> tuple[dict, bool]:
        """Optimizer steps over the loader (until total_iters or the time budget): -> (the epoch's mean
        losses, lr and images/s; whether the budget stopped it). NonFiniteLossError before a bad step."""
        t, cfg = self.cfg.train, self.cfg
        seed_everything(epoch_seed(t.seed, state.epoch))
        sums = torch.zeros(3 if self.distiller is None else 4, dtype=torch.float64)
        n_iter, n_img, stopped = 0, 0, False
        t_epoch = time.perf_counter()
        for batch in self.loader:
            images = prepare(self.model, batch.images, cfg, self.device)
            boxes = batch.boxes.to(self.device, non_blocking=True)
            labels = batch.labels.to(self.device, non_blocking=True)
            with autocast(cfg, self.device, training=True):
                loc, conf = self.step_model(images)
            parts = self.criterion(loc.float(), conf.float(), self.model.priors, boxes, labels)
            loss, terms = parts.total, [parts.total.detach(), parts.loc.detach(), parts.conf.detach()]
            if self.distiller is not None:  # the teacher's term joins the objective (train/loss_distill)
                distill = self.distiller(batch.images, loc, conf, self.model.priors, boxes, labels)
                loss, terms = loss + distill, terms + [distill.detach()]
            values = torch.stack(terms).double().cpu()
            lr = self.optimizer.param_groups[0]["lr"]
            if not torch.isfinite(values).all():
                kept = f"last good checkpoint kept: {last_path}" if last_path.exists() else "no checkpoint written yet"
                raise NonFiniteLossError(
                    f"non-finite loss at iteration {state.iteration + 1} (epoch {state.epoch + 1}, lr {lr:.4g}): "
                    f"total={values[0].item():.4g} loc={values[1].item():.4g} conf={values[2].item():.4g}"
                    + (f" distill={values[3].item():.4g}" if len(values) > 3 else "") + f"; {kept}")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if t.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            state.iteration += 1
            n_iter += 1
            n_img += images.shape[0]
            sums += values
            progress.update(state.iteration, values[0].item(), lr, n_img / max(1e-9, time.perf_counter() - t_epoch))
            stopped = over_budget()
            if state.iteration >= total_iters or stopped:
                break
        state.epoch += 1
        train_s = time.perf_counter() - t_epoch
        state.device_seconds += train_s
        mean = (sums / max(1, n_iter)).tolist()
        return {M.EPOCH: state.epoch, M.ITERATION: state.iteration, M.TRAIN_LOSS: mean[0],
                M.TRAIN_LOSS_LOC: mean[1], M.TRAIN_LOSS_CONF: mean[2],
                **({M.TRAIN_LOSS_DISTILL: mean[3]} if self.distiller is not None else {}),
                M.TRAIN_LR: self.optimizer.param_groups[0]["lr"], M.TRAIN_IMG_S: n_img / max(1e-9, train_s)}, stopped


# ---------------------------------------------------------------- the loop


def fit(cfg: ExperimentConfig, callbacks: Iterable[Callback] = (), run_dir=None, resume: bool = False,
        clock: Callable[[], float] = time.perf_counter) -> FitResult:
    """Train `cfg`; report through `callbacks`; checkpoint to `run_dir` (default runs/<name>-<hash>).
    `clock`: the run's clock in seconds (train.time_budget_s, schedule.unit "time"); tests inject one."""
    from ssd_core.data import make_loader
    from ssd_core.distill import build_distiller
    from ssd_core.evaluate import DetectionAccumulator
    from ssd_core.loss import MultiBoxLoss

    # -- setup: data, model, optimisation
    callbacks, t = list(callbacks), cfg.train
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    device = resolve_device(cfg)
    cfg = resolve_priors(cfg)  # model.prior_scales: auto -> sizes fitted to the training boxes, in the config
    seed_everything(t.seed)
    splits, skipped = build_splits(cfg)  # unreadable images: refused here, or left out with data.skip_bad
    train_ds, val_ds, test_ds = splits["train"], splits[M.VAL], splits[M.TEST]  # val None: select the last
    class_names = list(train_ds.class_names)                                    # epoch; test None: no report
    run_dir.mkdir(parents=True, exist_ok=True)  # once the data is known to load: a bad root leaves nothing behind
    (run_dir / RD.DATA_RECORD).write_text(json.dumps([split_record(ds, split, cfg, skipped.get(split, ()))
                                                      for split, ds in splits.items() if ds is not None], indent=1))
    loader = make_loader(train_ds, batch_size=t.batch_size, shuffle=True, num_workers=cfg.data.num_workers,
                         seed=t.seed, pin_memory=device.type == "cuda", persistent_workers=False,
                         drop_last=len(train_ds) >= 2 * t.batch_size)
    iters_per_epoch = len(loader)
    if iters_per_epoch == 0:
        raise ConfigError(f"{cfg.source}: train.batch_size: {t.batch_size} leaves no batch in "
                          f"{len(train_ds)} training images")
    total_iters = t.max_iters or t.epochs * iters_per_epoch
    total_epochs = math.ceil(total_iters / iters_per_epoch)
    model = build_model(cfg, len(class_names) + 1).to(device)
    boxes, labels, _ = training_boxes(cfg, train_ds)  # how the default boxes cover them: data/... metrics
    cover = coverage(model.prior_spec, boxes, labels, class_names).metrics()
    distiller = build_distiller(cfg, class_names, model, device)  # None unless distill.teacher is set
    plan = precision.resolve(t, device)  # train.amp on this device: autocast dtype, layout, scaler
    if plan.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    state, start = TrainState(), clock()

    def elapsed() -> float:  # the run's wall-clock seconds, resumes included
        return state.elapsed_seconds + clock() - start

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, iters_per_epoch, total_iters, elapsed))
    scaler = torch.amp.GradScaler("cuda", enabled=plan.scaler)
    generator = getattr(loader, "generator", None)
    last_path, best_path = run_dir / RD.LAST, run_dir / RD.BEST

    # -- resume
    if resume and last_path.exists():
        state = TrainState.resume(last_path, model, optimizer, scheduler, scaler, generator, cfg, device)
    (run_dir / RD.CONFIG).write_text(to_yaml(cfg))
    _rewrite_metrics(run_dir / RD.METRICS, state.history)  # the checkpoint's history is the record
    for cb in callbacks:
        cb.on_fit_start(cfg, run_dir)
    trainer = Trainer(cfg, model, torch.compile(model) if t.compile else model, optimizer, scheduler, scaler,
                      MultiBoxLoss(), loader, device, distiller)
    metric_key = M.metric_for(cfg.eval.metric, M.VAL)
    reference = None  # the val ground truth, read once
    budget = t.time_budget_s
    progress = Progress(total_iters, state.iteration, t.log_every,
                        remaining=(lambda: max(0.0, budget - elapsed())) if budget else None)

    def save(*paths: Path) -> None:  # one snapshot (one clock reading), written to each path
        snapshot = TrainState(state.epoch, state.iteration, state.history, state.best_metric, state.best_epoch,
                              state.device_seconds, elapsed())
        for path in paths:
            snapshot.save(path, model, optimizer, scheduler, scaler, generator, class_names, cfg)

    # -- the loop: train an epoch, evaluate, select, checkpoint, report
    model.train()
    stopped = False
    try:
        while state.epoch < total_epochs and state.iteration < total_iters and not stopped:
            metrics, stopped = trainer.train_one_epoch(state, total_iters, progress,
                                                       lambda: bool(budget and elapsed() > budget), last_path)
            last_epoch = stopped or state.epoch >= total_epochs or state.iteration >= total_iters
            t_eval = time.perf_counter()
            evaluated = val_ds is None or state.epoch % cfg.eval.every_epochs == 0 or last_epoch
            if val_ds is not None and evaluated:
                if reference is None:
                    reference = DetectionAccumulator.for_dataset(val_ds)
                metrics.update(evaluate_model(model, val_ds, cfg, device, prefix=M.VAL, reference=reference))
            # The selected checkpoint: the best val epoch so far (the last epoch without a val split).
            improved = (metric_key in metrics and (state.best_metric is None or metrics[metric_key] > state.best_metric)
                        ) if val_ds is not None else True
            if improved:
                state.best_metric, state.best_epoch = metrics.get(metric_key), state.epoch
            if last_epoch and test_ds is not None:
                metrics.update(score_test(model, test_ds, cfg, device, best_path if not improved else None,
                                          run_dir / RD.TEST_DETECTIONS))
                metrics[M.TEST_SELECTED] = float(state.best_epoch)
            point = budget_point(cfg.eval.test_at, state.history, 1.0 if last_epoch else
                                 max(state.iteration / total_iters, elapsed() / budget if budget else 0.0)
                                 ) if cfg.eval.test_at else None
            if point is not None and evaluated and test_ds is not None:  # eval.test_at: the test split so far
                metrics.update(_score_point(point, metrics, model, test_ds, cfg, device, run_dir,
                                            None if improved else best_path, last_epoch))
                metrics[M.TEST_AT_SELECTED] = float(state.best_epoch)
            metrics[M.FINAL] = 1.0 if last_epoch else 0.0
            if state.best_metric is not None:
                metrics[M.SCORE] = state.best_metric
            state.device_seconds += time.perf_counter() - t_eval
            metrics[M.DEVICE_HOURS] = state.device_seconds / 3600.0
            if state.epoch == 1:
                metrics.update(cover)
            metrics[M.PERF_BF16] = float(plan.dtype == torch.bfloat16)
            metrics[M.PERF_CHANNELS_LAST] = float(plan.channels_last)
            state.history.append(metrics)
            save(last_path, *([best_path] if improved or not best_path.exists() else []))
            try:
                with open(run_dir / RD.METRICS, "a") as f:
                    f.write(json.dumps(metrics) + "\n")
            except OSError as exc:
                raise disk_full(run_dir / RD.METRICS, exc) or exc
            for cb in callbacks:
                cb.on_epoch_end(state.epoch, metrics, run_dir)
    finally:
        progress.close()

    final = state.history[-1] if state.history else {}
    result = FitResult(best_metric=state.best_metric, metrics_history=state.history, run_dir=run_dir,
                       best_epoch=state.best_epoch, epochs=state.epoch, iterations=state.iteration,
                       final_metrics=final, stopped_by_budget=stopped, metric_name=metric_key,
                       test_metrics={k: v for k, v in final.items() if k.startswith(M.TEST + "/")})
    for cb in callbacks:
        cb.on_fit_end(result)
    return result


def budget_point(points, history: list[dict], progress: float) -> Optional[float]:
    """The budget point (eval.test_at) reached at `progress` (the fraction of the budget used): the largest
    point at or below it that no earlier epoch took; None when there is none. Points passed in one epoch
    collapse into the largest of them."""
    done = max((float(m[M.TEST_AT_FRACTION]) for m in history if M.TEST_AT_FRACTION in m), default=0.0)
    due = [f for f in points if done < f <= progress + 1e-9]
    return max(due) if due else None


def _score_point(point: float, metrics: dict, model, test_ds, cfg: ExperimentConfig, device, run_dir: Path,
                 selected, last_epoch: bool) -> dict:
    """`test_at/...` at a budget point: the test split at the checkpoint best on the selection split so far
    (`selected`: best.pt, or None when it is the model itself), its detections saved in the run dir. At the
    final epoch the reported split was just scored at that checkpoint: its numbers are reused."""
    out = {M.TEST_AT_FRACTION: point}
    path = run_dir / RD.detections_at(point)
    if last_epoch:
        import shutil

        out.update({M.TEST_AT + k[len(M.TEST):]: v for k, v in metrics.items()
                    if k.startswith(M.TEST + "/") and k != M.TEST_SELECTED})
        shutil.copyfile(run_dir / RD.TEST_DETECTIONS, path)
        return out
    out.update(score_selected(model, test_ds, cfg, device, selected, M.TEST_AT, path))
    return out


def _rewrite_metrics(path: Path, history: list[dict]) -> None:
    """metrics.jsonl as the resumed checkpoint's history says: a run killed between writing last.pt and
    appending its epoch's line would otherwise miss that line (or keep lines of epochs last.pt lost)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(m) + "\n" for m in history))
    tmp.replace(path)


__all__ = ["Callback", "FitResult", "fit", "seed_everything", "epoch_seed", "Trainer", "save_checkpoint"]
