"""The one training loop: `fit(cfg, callbacks)`. The CLI (`ssdlab train`) and Ray Tune workers both call it.

Recipe (paper section 3): SGD with momentum (AdamW as an option), weight decay (optionally not on
norms and biases), linear warmup, then a multistep or cosine schedule counted in iterations, epochs
or wall-clock time (schedule.py); the paper's SSD300 is 120k iterations with the lr divided by 10 at
80k and 100k. Options: gradient clipping, mixed precision (train.amp: bf16 autocast on CUDA and on CPUs with
bf16 instructions, fp16 with a GradScaler on CUDA; ssd_core/precision.py), channels_last, torch.compile, knowledge distillation from a teacher checkpoint (config `distill`,
ssd_core/distill.py; off by default). Seeding is deterministic (torch, numpy, Python, the loader's generator).

The loop reads like the paper's recipe, one named step each (nanoGPT's train.py is the model):

    run = setup(cfg, ...)                      data, model, optimisation; last.pt's state with `resume`
    while not run.done(stopped):
        metrics, stopped = run.trainer.train_one_epoch(...)      one epoch of SGD (ssd_core/epoch.py)
        evaluate_and_select(run, metrics, ...)                   val/..., best.pt = the best val epoch
        end_of_training(run, metrics, ...)                       at the last epoch: test/... at best.pt
        score_budget_point(run, metrics, ...)                    eval.test_at: test_at/... along the budget
        mark_epoch(run, metrics, ...)                            final, score, device-hours, coverage, precision
        record_epoch(run, metrics, ...)                          history, last.pt (+ best.pt), metrics.jsonl
        callbacks

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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from ssd_core import metrics as M
from ssd_core import precision
from ssd_core import rundir as RD
from ssd_core.build import build_model, build_optimizer, build_splits, default_run_dir, resolve_device
from ssd_core.checkpoint import TrainState, save_checkpoint
from ssd_core.config import ExperimentConfig, to_yaml
from ssd_core.data.record import split_record
from ssd_core.epoch import Trainer, epoch_seed, seed_everything
from ssd_core.errors import ConfigError, disk_full
from ssd_core.inference import evaluate_model, score_selected, score_test
from ssd_core.prior_fit import coverage, resolve_priors, training_boxes
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


# ---------------------------------------------------------------- the run


@dataclass
class Run:
    """A training run as `fit` drives it, made by `setup`: the resolved config, the run dir, the splits it is
    scored on, the trainer, the state (resumed from last.pt) and the run's clock."""

    cfg: ExperimentConfig                  # model.prior_scales: auto resolved (fitted default boxes)
    run_dir: Path
    device: torch.device
    val_ds: Any                            # None: the last epoch is the selected one
    test_ds: Any                           # None: nothing is reported
    class_names: list[str]
    plan: precision.Precision              # train.amp on this device: autocast dtype, layout, scaler
    cover: dict[str, float]                # data/...: how the default boxes cover the training boxes
    total_iters: int
    total_epochs: int
    clock: Callable[[], float]
    start: float                           # clock() when this process started the run
    state: TrainState = field(default_factory=TrainState)
    trainer: Optional[Trainer] = None
    generator: Any = None                  # the loader's generator (its state goes with each checkpoint)
    progress: Optional[Progress] = None
    reference: Any = None                  # the val ground truth, read once

    @property
    def model(self) -> nn.Module:
        return self.trainer.model

    @property
    def metric_key(self) -> str:
        return M.metric_for(self.cfg.eval.metric, M.VAL)

    @property
    def last_path(self) -> Path:
        return self.run_dir / RD.LAST

    @property
    def best_path(self) -> Path:
        return self.run_dir / RD.BEST

    def elapsed(self) -> float:
        """The run's wall-clock seconds, resumes included."""
        return self.state.elapsed_seconds + self.clock() - self.start

    def over_budget(self) -> bool:
        budget = self.cfg.train.time_budget_s
        return bool(budget and self.elapsed() > budget)

    def budget_used(self) -> float:
        """The fraction of the budget used: of the iterations, or of train.time_budget_s when that is further."""
        budget = self.cfg.train.time_budget_s
        return max(self.state.iteration / self.total_iters, self.elapsed() / budget if budget else 0.0)

    def done(self, stopped: bool) -> bool:
        """Whether training has ended: the epochs or iterations are done, or the time budget stopped it."""
        return stopped or self.state.epoch >= self.total_epochs or self.state.iteration >= self.total_iters

    def save(self, *paths: Path) -> None:
        """One snapshot of the state (one clock reading), written to each path."""
        s, t = self.state, self.trainer
        snapshot = TrainState(s.epoch, s.iteration, s.history, s.best_metric, s.best_epoch, s.device_seconds,
                              self.elapsed())
        for path in paths:
            snapshot.save(path, t.model, t.optimizer, t.scheduler, t.scaler, self.generator, self.class_names, self.cfg)

    def result(self, stopped: bool) -> FitResult:
        s = self.state
        final = s.history[-1] if s.history else {}
        return FitResult(best_metric=s.best_metric, metrics_history=s.history, run_dir=self.run_dir,
                         best_epoch=s.best_epoch, epochs=s.epoch, iterations=s.iteration, final_metrics=final,
                         stopped_by_budget=stopped, metric_name=self.metric_key,
                         test_metrics={k: v for k, v in final.items() if k.startswith(M.TEST + "/")})


def setup(cfg: ExperimentConfig, run_dir=None, resume: bool = False,
          clock: Callable[[], float] = time.perf_counter) -> Run:
    """Data, model and optimisation, in the order that fixes the random streams; the state of last.pt with
    `resume`. Writes data.json, config.yaml and metrics.jsonl (as that state says) into the run dir."""
    from ssd_core.data import make_loader
    from ssd_core.distill import build_distiller
    from ssd_core.loss import MultiBoxLoss

    t = cfg.train
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    device = resolve_device(cfg)
    cfg = resolve_priors(cfg)  # model.prior_scales: auto -> sizes fitted to the training boxes, in the config
    seed_everything(t.seed)
    splits, skipped = build_splits(cfg)  # unreadable images: refused here, or left out with data.skip_bad
    train_ds = splits["train"]  # val None: select the last epoch; test None: no report
    class_names = list(train_ds.class_names)
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
    model = build_model(cfg, len(class_names) + 1).to(device)
    boxes, labels, _ = training_boxes(cfg, train_ds)  # how the default boxes cover them: data/... metrics
    cover = coverage(model.prior_spec, boxes, labels, class_names).metrics()
    distiller = build_distiller(cfg, class_names, model, device)  # None unless distill.teacher is set
    plan = precision.resolve(t, device)
    if plan.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    run = Run(cfg, run_dir, device, splits[M.VAL], splits[M.TEST], class_names, plan, cover, total_iters,
              math.ceil(total_iters / iters_per_epoch), clock, clock())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, iters_per_epoch, total_iters, run.elapsed))
    scaler = torch.amp.GradScaler("cuda", enabled=plan.scaler)
    run.generator = getattr(loader, "generator", None)
    if resume and run.last_path.exists():
        run.state = TrainState.resume(run.last_path, model, optimizer, scheduler, scaler, run.generator, cfg, device)
    (run_dir / RD.CONFIG).write_text(to_yaml(cfg))
    _rewrite_metrics(run_dir / RD.METRICS, run.state.history)  # the checkpoint's history is the record
    run.trainer = Trainer(cfg, model, torch.compile(model) if t.compile else model, optimizer, scheduler, scaler,
                          MultiBoxLoss(), loader, device, distiller)
    budget = t.time_budget_s
    run.progress = Progress(total_iters, run.state.iteration, t.log_every,
                            remaining=(lambda: max(0.0, budget - run.elapsed())) if budget else None)
    return run


# ---------------------------------------------------------------- the loop


def fit(cfg: ExperimentConfig, callbacks: Iterable[Callback] = (), run_dir=None, resume: bool = False,
        clock: Callable[[], float] = time.perf_counter) -> FitResult:
    """Train `cfg`; report through `callbacks`; checkpoint to `run_dir` (default runs/<name>-<hash>).
    `clock`: the run's clock in seconds (train.time_budget_s, schedule.unit "time"); tests inject one."""
    callbacks = list(callbacks)
    run = setup(cfg, run_dir, resume, clock)
    for cb in callbacks:
        cb.on_fit_start(run.cfg, run.run_dir)
    run.model.train()
    stopped = False
    try:
        while not run.done(stopped):
            metrics, stopped = run.trainer.train_one_epoch(run.state, run.total_iters, run.progress, run.over_budget,
                                                           run.last_path)
            last_epoch = run.done(stopped)
            t_eval = time.perf_counter()
            evaluated, improved = evaluate_and_select(run, metrics, last_epoch)
            if last_epoch:
                end_of_training(run, metrics, improved)
            score_budget_point(run, metrics, evaluated, improved, last_epoch)
            mark_epoch(run, metrics, last_epoch, t_eval)
            record_epoch(run, metrics, improved)
            for cb in callbacks:
                cb.on_epoch_end(run.state.epoch, metrics, run.run_dir)
    finally:
        run.progress.close()
    result = run.result(stopped)
    for cb in callbacks:
        cb.on_fit_end(result)
    return result


def evaluate_and_select(run: Run, metrics: dict, last_epoch: bool) -> tuple[bool, bool]:
    """The selection split (val/...) scored when due (every eval.every_epochs epochs, and the last), and the
    selected checkpoint kept: the best val epoch so far (the last epoch without a val split). -> (evaluated,
    improved: this epoch is the selected one)."""
    from ssd_core.evaluate import DetectionAccumulator

    state, val_ds, key = run.state, run.val_ds, run.metric_key
    evaluated = val_ds is None or state.epoch % run.cfg.eval.every_epochs == 0 or last_epoch
    if val_ds is not None and evaluated:
        if run.reference is None:
            run.reference = DetectionAccumulator.for_dataset(val_ds)
        metrics.update(evaluate_model(run.model, val_ds, run.cfg, run.device, prefix=M.VAL, reference=run.reference))
    improved = (key in metrics and (state.best_metric is None or metrics[key] > state.best_metric)
                ) if val_ds is not None else True
    if improved:
        state.best_metric, state.best_epoch = metrics.get(key), state.epoch
    return evaluated, improved


def end_of_training(run: Run, metrics: dict, improved: bool) -> None:
    """The reported split (data.test_sets), scored once, at the selected checkpoint (best.pt, or the weights in
    hand when this epoch is the selected one): test/..., test_last/..., test/selected_epoch. Nothing without one."""
    if run.test_ds is None:
        return
    metrics.update(score_test(run.model, run.test_ds, run.cfg, run.device, run.best_path if not improved else None,
                              run.run_dir / RD.TEST_DETECTIONS))
    metrics[M.TEST_SELECTED] = float(run.state.best_epoch)


def score_budget_point(run: Run, metrics: dict, evaluated: bool, improved: bool, last_epoch: bool) -> None:
    """eval.test_at: at a budget point this epoch reached, the test split so far (test_at/...) at the checkpoint
    best on the selection split so far (_score_point)."""
    test_at = run.cfg.eval.test_at
    point = budget_point(test_at, run.state.history, 1.0 if last_epoch else run.budget_used()) if test_at else None
    if point is not None and evaluated and run.test_ds is not None:
        metrics.update(_score_point(point, metrics, run.model, run.test_ds, run.cfg, run.device, run.run_dir,
                                    None if improved else run.best_path, last_epoch))
        metrics[M.TEST_AT_SELECTED] = float(run.state.best_epoch)


def mark_epoch(run: Run, metrics: dict, last_epoch: bool, t_eval: float) -> None:
    """What every epoch carries besides its measurements: `final`, the run's score (the best val metric so far,
    once there is one: ssd_core/metrics.py), the device-hours (the evaluation since `t_eval` included), the
    default boxes' coverage (the first epoch) and the precision it trained at."""
    state = run.state
    metrics[M.FINAL] = 1.0 if last_epoch else 0.0
    if state.best_metric is not None:
        metrics[M.SCORE] = state.best_metric
    state.device_seconds += time.perf_counter() - t_eval
    metrics[M.DEVICE_HOURS] = state.device_seconds / 3600.0
    if state.epoch == 1:
        metrics.update(run.cover)
    metrics[M.PERF_BF16] = float(run.plan.dtype == torch.bfloat16)
    metrics[M.PERF_CHANNELS_LAST] = float(run.plan.channels_last)


def record_epoch(run: Run, metrics: dict, improved: bool) -> None:
    """The epoch into the history, then last.pt (and best.pt when it is the selected epoch, or none exists yet),
    then its line of metrics.jsonl: a run killed in between resumes from last.pt and rewrites the log from it."""
    run.state.history.append(metrics)
    run.save(run.last_path, *([run.best_path] if improved or not run.best_path.exists() else []))
    try:
        with open(run.run_dir / RD.METRICS, "a") as f:
            f.write(json.dumps(metrics) + "\n")
    except OSError as exc:
        raise disk_full(run.run_dir / RD.METRICS, exc) or exc  # noqa: B904 (the OSError, or what it means)


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


__all__ = ["Callback", "FitResult", "fit", "setup", "Run", "seed_everything", "epoch_seed", "Trainer", "save_checkpoint"]
