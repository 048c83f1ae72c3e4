"""The one training loop: `fit(cfg, callbacks)`. The CLI (`ssdlab train`) and Ray Tune workers both call it.

Recipe (paper section 3): SGD with momentum (AdamW as an option), weight decay (optionally not on
norms and biases), linear warmup, then a multistep or cosine schedule counted in iterations or
epochs; the paper's SSD300 is 120k iterations with the lr divided by 10 at 80k and 100k.
Options: gradient clipping, AMP on CUDA (bf16, or fp16 with a GradScaler), channels_last,
torch.compile. Seeding is deterministic (torch, numpy, Python, the loader's generator).

Every `eval.every_epochs` epochs the model is scored on the selection split (`val/...`, the VOC
metric, and COCO AP on COCO data); best.pt keeps the best such epoch. When training ends, the reported
split (data.test_sets) is scored once at that selected checkpoint (`test/...`) and at the final weights
(`test_last/...`), and the selected checkpoint's test detections are saved as test_detections.npz
(ssd_core.metrics names every metric). Nothing is ever chosen on the test split.
Metrics reach the outside world only through callbacks (ssd_core never imports Ray or MLflow):

    on_fit_start(cfg, run_dir) ; on_epoch_end(epoch, metrics, run_dir) ; on_fit_end(result)

`run_dir/last.pt` and `run_dir/best.pt` are written atomically at the end of each epoch and hold
everything needed to resume to the same final weights (`resume=True`). A non-finite loss raises
NonFiniteLossError before the optimizer step, so the last good checkpoint stays intact.
Exact resume holds for data.num_workers = 0 and for workers (they are re-seeded each epoch from
the loader's generator).
"""
from __future__ import annotations

import copy
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ssd_core.checkpoint import (load_checkpoint, load_model_state, rng_state, save_checkpoint,
                                 set_rng_state)
from ssd_core.config import (ExperimentConfig, config_hash, resolve_data_root, to_yaml,
                             validate_config)
from ssd_core import metrics as M
from ssd_core.errors import CheckpointError, ConfigError, DataError, NonFiniteLossError


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
    metric_name: str = "val/mAP50"
    test_metrics: dict[str, float] = field(default_factory=dict)  # reported split, selected checkpoint

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.run_dir / "last.pt"


TEST_DETECTIONS = M.TEST_DETECTIONS


# ---------------------------------------------------------------- setup


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """Each epoch re-seeds torch, numpy and Python from (seed, epoch): the augmentation streams
    (seeded from torch.initial_seed() in ssd_core.augment) then depend on the epoch alone, which is
    what makes a resumed run reach the same weights."""
    return (seed * 1_000_003 + epoch + 1) % 2**63


def resolve_device(cfg: ExperimentConfig) -> torch.device:
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{cfg.source}: train.device: 'cuda' requested but no CUDA device is available")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(want)


def default_run_dir(cfg: ExperimentConfig) -> Path:
    """runs/<name>-<config hash>: the same config resumes into the same folder."""
    return Path(cfg.output.dir) / f"{cfg.name}-{config_hash(cfg)}"


def split_sets(cfg: ExperimentConfig, split: str) -> tuple[list[str], Optional[bool]]:
    """(image sets, holdout side) of a split: 'train' -> data.train_sets minus the holdout slice,
    'val' -> data.val_sets or the holdout slice of data.train_sets ([] when neither), 'test' ->
    data.test_sets; anything else is an image set name ('BCCD/test', 'val2017'). The side is True
    for the held-out images, False for the rest, None when no holdout applies."""
    d = cfg.data
    if split == "train":
        return list(d.train_sets), (False if d.holdout is not None else None)
    if split == "val":
        if d.val_sets:
            return list(d.val_sets), None
        return (list(d.train_sets), True) if d.holdout is not None else ([], None)
    if split == "test":
        return list(d.test_sets), None
    return [split], None


def build_dataset(cfg: ExperimentConfig, split: str, train: bool, class_names: Optional[Sequence[str]] = None):
    """The dataset for `split` (see split_sets) with the training augmentation (train=True) or a plain
    resize; None when the config has no such split (no val_sets/holdout, or no test_sets).
    `class_names` (default data.class_names) fixes the label order, e.g. the training set's classes."""
    from ssd_core import data as D
    from ssd_core.augment import build_transform

    sets, held_out = split_sets(cfg, split)
    if not sets:
        return None
    root = resolve_data_root(cfg)
    if cfg.data.synthetic is not None:  # idempotent: regenerates only a missing, partial or different set
        from ssd_core.synth import ensure_synthetic
        ensure_synthetic(root, **cfg.data.synthetic.generator_args())
    if not root.exists():
        raise ConfigError(f"{cfg.source}: data.root: {root} does not exist")
    transform = build_transform(cfg.augment, cfg.model.image_size, train=train)
    names = cfg.data.class_names if class_names is None else list(class_names)
    try:
        if cfg.data.format == "voc":
            ds = D.VOCDataset(root, sets, class_names=names, keep_difficult=cfg.data.keep_difficult,
                              transform=transform, cache_images=cfg.data.cache_images)
        else:
            if len(sets) != 1:
                raise ConfigError(f"{cfg.source}: data.{split}_sets: COCO takes one set (e.g. [train2017]), got {sets}")
            ds = D.COCODataset(root / sets[0], root / "annotations" / f"instances_{sets[0]}.json",
                               transform=transform, class_names=names, cache_images=cfg.data.cache_images)
        if held_out is not None:
            mask = D.holdout_mask(D.image_keys(ds), cfg.data.holdout, cfg.data.holdout_seed)
            D.select(ds, mask if held_out else ~mask)
    except DataError as exc:
        if names is not None and "class" in str(exc):
            raise ConfigError(f"{cfg.source}: data.class_names {names} do not match the data: {exc}") from None
        if "holdout" in str(exc):
            raise ConfigError(f"{cfg.source}: data.holdout: {exc}") from None
        raise
    return ds


def build_model(cfg: ExperimentConfig, num_classes: int) -> nn.Module:
    from ssd_core.model import build_ssd
    m = cfg.model
    options: dict[str, Any] = {"lite_heads": m.lite_heads, "prior_scales": m.prior_scales}
    if m.backbone in ("mobilenet_v2", "tiny"):
        options["width_mult"] = m.width_mult
    if m.output_stride != 8:
        options["output_stride"] = m.output_stride
    if m.backbone == "vgg16":
        options["vgg_weights"] = m.vgg_weights
    for key in ("first_ratio", "min_ratio", "max_ratio"):
        if getattr(m, f"prior_{key}") is not None:
            options[key] = getattr(m, f"prior_{key}")
    return build_ssd(m.backbone, num_classes=num_classes, image_size=m.image_size,
                     pretrained=m.pretrained, **options)


def param_groups(model: nn.Module, weight_decay: float, no_decay_norm_bias: bool) -> list[dict]:
    """All parameters decay, or (no_decay_norm_bias) biases and 1-d norm scales do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not no_decay_norm_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim > 1]
    rest = [p for p in params if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def build_optimizer(cfg: ExperimentConfig, model: nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    groups = param_groups(model, t.weight_decay, t.no_decay_norm_bias)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.momentum, 0.999))


def lr_factor(cfg: ExperimentConfig, iters_per_epoch: int, total_iters: int,
              clock: Optional[Callable[[], float]] = None):
    """it -> multiplier of train.lr: linear warmup (iterations) times the multistep/cosine/constant
    schedule. With schedule.unit "time" the schedule's position is clock() / train.time_budget_s
    (clock: elapsed seconds of the run) instead of the iteration."""
    s, warmup = cfg.train.schedule, cfg.train.warmup_iters
    if s.unit == "time":
        if clock is None:
            raise ValueError("lr_factor: schedule.unit 'time' needs a clock")
        budget = float(cfg.train.time_budget_s)
        position, end, milestones = (lambda it: min(clock(), budget)), budget, [m * budget for m in s.milestones]
    else:
        scale = iters_per_epoch if s.unit == "epoch" else 1
        position, end, milestones = (lambda it: min(it, total_iters)), max(1, total_iters), [m * scale for m in s.milestones]

    def factor(it: int) -> float:
        f = min(1.0, (it + 1) / warmup) if warmup else 1.0
        x = position(it)
        if s.type == "multistep":
            f *= s.gamma ** sum(x >= m for m in milestones)
        elif s.type == "cosine":
            f *= 0.5 * (1 + math.cos(math.pi * x / end))
        return f

    return factor


class _Progress:
    """tqdm bar (loss, lr, img/s, ETA) on a TTY; plain lines every log_every iterations otherwise."""

    def __init__(self, total: int, initial: int, log_every: int, stream=None,
                 remaining: Optional[Callable[[], float]] = None) -> None:
        self.stream = stream or sys.stderr
        self.total, self.log_every, self.bar, self.remaining = total, log_every, None, remaining
        self.t0, self.n0 = time.perf_counter(), initial
        if self.stream.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=None if remaining else total, initial=initial, unit="it", dynamic_ncols=True,
                            file=self.stream)

    def eta(self, it: int) -> float:
        """Seconds left: by the iteration rate, or by the time budget (`remaining`) when that ends sooner."""
        rate = (it - self.n0) / max(1e-9, time.perf_counter() - self.t0)
        eta = (self.total - it) / rate if rate > 0 else float("inf")
        return min(eta, self.remaining()) if self.remaining else eta

    def update(self, it: int, loss: float, lr: float, img_s: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            extra = {"left": f"{self.eta(it):.0f}s"} if self.remaining else {}
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", img_s=f"{img_s:.1f}", **extra, refresh=False)
        elif it % self.log_every == 0 or it == self.total:
            print(f"iter {it}/{self.total} loss {loss:.4f} lr {lr:.3g} img/s {img_s:.1f} eta {self.eta(it):.0f}s",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------- evaluation


@torch.inference_mode()
def predict(model: nn.Module, loader, cfg: ExperimentConfig, device: torch.device, accumulator) -> None:
    """Run the model over `loader`; add each batch's post-processed detections to `accumulator`."""
    from ssd_core.postprocess import postprocess

    e, net = cfg.eval, getattr(model, "_orig_mod", model)
    was_training = model.training
    model.eval()
    for batch in loader:
        images = net.normalize(batch.images.to(device, non_blocking=True))
        if cfg.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(cfg, device):
            loc, conf = model(images)
        det = postprocess(loc.float(), conf.float(), _priors(model), score_threshold=e.score_threshold,
                          nms_threshold=e.nms_threshold, top_k=e.top_k, max_detections=e.max_detections)
        accumulator.add(det, batch.indices)
    model.train(was_training)


def _priors(model: nn.Module) -> torch.Tensor:
    return getattr(model, "_orig_mod", model).priors


def evaluate_model(model: nn.Module, dataset, cfg: ExperimentConfig, device: torch.device,
                   prefix: str = M.VAL, reference=None, save_detections=None) -> dict[str, float]:
    """VOC07 11-point and area mAP@0.5 (+ per class), and COCO AP on COCO data, as flat metrics named
    `<prefix>/...` (ssd_core.metrics). `reference`: a DetectionAccumulator.for_dataset(dataset) to reuse
    its ground truth. `save_detections`: also write the detections + ground truth there (.npz)."""
    from ssd_core.data import image_keys, make_loader
    from ssd_core.evaluate import DetectionAccumulator

    ref = reference if reference is not None else DetectionAccumulator.for_dataset(dataset)
    acc = DetectionAccumulator(ref.class_names, ref.image_sizes, ref.ground_truth)
    loader = make_loader(dataset, batch_size=cfg.eval.batch_size or cfg.train.batch_size, shuffle=False,
                         num_workers=cfg.data.num_workers, seed=cfg.train.seed,
                         pin_memory=device.type == "cuda", persistent_workers=False, drop_last=False)
    predict(model, loader, cfg, device, acc)
    voc = acc.evaluate(iou_threshold=0.5)
    metrics = {M.map50(prefix): float(voc["mAP50"]), M.map50_area(prefix): float(voc["mAP50_area"])}
    metrics.update({M.class_ap50(prefix, c): float(ap) for c, ap in voc["AP50"].items()})
    if cfg.data.format == "coco":
        metrics.update(_coco_metrics(dataset, acc, prefix))
    if save_detections is not None:
        acc.save(save_detections, image_keys(dataset))
    return metrics


def _coco_metrics(dataset, acc, prefix: str) -> dict[str, float]:
    from ssd_core.evaluate import evaluate_coco
    results = acc.coco_results(label_to_category=dataset.contiguous_to_cat_id, image_id_map=dataset.ids)
    coco = evaluate_coco(dataset.coco, results)
    return {M.coco_ap(prefix, k): float(coco[k]) for k in M.COCO_KEYS if k in coco}


def _autocast(cfg: ExperimentConfig, device: torch.device):
    enabled = device.type == "cuda" and cfg.train.amp != "off"
    dtype = torch.bfloat16 if cfg.train.amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def score_test(model: nn.Module, test_ds, cfg: ExperimentConfig, device: torch.device,
               selected_checkpoint=None, detections_path=None) -> dict[str, float]:
    """The reported split, once: `test/...` at the selected weights (`selected_checkpoint`'s, or the
    model's own when None: it is the selected one) and `test_last/mAP50(_area)` at the model's current
    (final) weights. The selected weights' detections go to `detections_path` (.npz)."""
    from ssd_core.evaluate import DetectionAccumulator

    reference = DetectionAccumulator.for_dataset(test_ds)
    last = evaluate_model(model, test_ds, cfg, device, prefix=M.TEST, reference=reference,
                          save_detections=detections_path if selected_checkpoint is None else None)
    if selected_checkpoint is None:
        selected = last
    else:
        chosen = copy.deepcopy(model)
        load_model_state(chosen, load_checkpoint(selected_checkpoint, map_location=device), selected_checkpoint)
        selected = evaluate_model(chosen, test_ds, cfg, device, prefix=M.TEST, reference=reference,
                                  save_detections=detections_path)
        del chosen
    out = dict(selected)
    for name in (M.map50, M.map50_area):
        out[M.last_of(name(M.TEST))] = last[name(M.TEST)]
    return out


# ---------------------------------------------------------------- the loop

_clock = time.perf_counter  # the run's clock (time budget, time schedule); tests substitute a fake one


def fit(cfg: ExperimentConfig, callbacks: Iterable[Callback] = (), run_dir=None, resume: bool = False
        ) -> FitResult:
    """Train `cfg`; report through `callbacks`; checkpoint to `run_dir` (default runs/<name>-<hash>)."""
    from ssd_core.data import make_loader
    from ssd_core.evaluate import DetectionAccumulator
    from ssd_core.loss import MultiBoxLoss

    callbacks = list(callbacks)
    t = cfg.train
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg)
    seed_everything(t.seed)

    train_ds = build_dataset(cfg, "train", train=True)
    class_names = list(train_ds.class_names)
    val_ds = build_dataset(cfg, M.VAL, train=False, class_names=class_names)    # None: select the last epoch
    test_ds = build_dataset(cfg, M.TEST, train=False, class_names=class_names)  # None: nothing reported
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
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model)
    start, elapsed_before = _clock(), 0.0  # elapsed_before: seconds of the run before a resume

    def elapsed() -> float:  # the run's wall-clock seconds: train.time_budget_s and schedule.unit "time"
        return elapsed_before + _clock() - start

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, iters_per_epoch, total_iters, elapsed))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and t.amp == "fp16")
    criterion = MultiBoxLoss()
    generator = getattr(loader, "generator", None)

    epoch, iteration, history, best, best_epoch, device_s = 0, 0, [], None, None, 0.0
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if resume and last_path.exists():
        state = load_checkpoint(last_path, map_location=device)
        if state.get("config_hash") != config_hash(cfg):
            raise CheckpointError(f"{last_path}: written by config {state.get('config_hash')}, "
                                  f"not this config ({config_hash(cfg)}); use another --run-dir")
        load_model_state(model, state, last_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        epoch, iteration = int(state["epoch"]), int(state["iteration"])
        history, best, best_epoch = list(state["history"]), state["best_metric"], state["best_epoch"]
        device_s = float(state.get("device_seconds", 0.0))
        elapsed_before = float(state.get("elapsed_seconds", 0.0))
        set_rng_state(state["rng"], generator)

    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    for cb in callbacks:
        cb.on_fit_start(cfg, run_dir)
    step_model = torch.compile(model) if t.compile else model
    net = model
    metric_key = M.metric_for(cfg.eval.metric, M.VAL)
    reference = None  # the val ground truth, read once
    stopped = False
    progress = _Progress(total_iters, iteration, t.log_every,
                         remaining=(lambda: max(0.0, t.time_budget_s - elapsed())) if t.time_budget_s else None)

    def checkpoint_state() -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else {},
                "epoch": epoch, "iteration": iteration, "rng": rng_state(generator),
                "history": history, "best_metric": best, "best_epoch": best_epoch,
                "device_seconds": device_s, "elapsed_seconds": elapsed(), "class_names": class_names,
                "config": cfg.model_dump(mode="json"), "config_yaml": to_yaml(cfg),
                "config_hash": config_hash(cfg), "config_source": cfg.source}

    model.train()
    try:
        while epoch < total_epochs and iteration < total_iters and not stopped:
            seed_everything(epoch_seed(t.seed, epoch))
            sums = torch.zeros(3, dtype=torch.float64)
            n_iter, n_img = 0, 0
            t_epoch = time.perf_counter()
            for batch in loader:
                images = net.normalize(batch.images.to(device, non_blocking=True))
                if t.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                boxes = batch.boxes.to(device, non_blocking=True)
                labels = batch.labels.to(device, non_blocking=True)
                with _autocast(cfg, device):
                    loc, conf = step_model(images)
                parts = criterion(loc.float(), conf.float(), model.priors, boxes, labels)
                values = torch.stack([parts.total.detach(), parts.loc.detach(), parts.conf.detach()]).double().cpu()
                lr = optimizer.param_groups[0]["lr"]
                if not torch.isfinite(values).all():
                    kept = f"last good checkpoint kept: {last_path}" if last_path.exists() else "no checkpoint written yet"
                    raise NonFiniteLossError(
                        f"non-finite loss at iteration {iteration + 1} (epoch {epoch + 1}, lr {lr:.4g}): "
                        f"total={values[0].item():.4g} loc={values[1].item():.4g} conf={values[2].item():.4g}; {kept}")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(parts.total).backward()
                if t.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                iteration += 1
                n_iter += 1
                n_img += images.shape[0]
                sums += values
                progress.update(iteration, values[0].item(), lr,
                                n_img / max(1e-9, time.perf_counter() - t_epoch))
                if t.time_budget_s and elapsed() > t.time_budget_s:
                    stopped = True
                if iteration >= total_iters or stopped:
                    break
            epoch += 1
            train_s = time.perf_counter() - t_epoch
            device_s += train_s
            mean = (sums / max(1, n_iter)).tolist()
            metrics = {"epoch": epoch, "iteration": iteration, "train/loss": mean[0], "train/loss_loc": mean[1],
                       "train/loss_conf": mean[2], "train/lr": optimizer.param_groups[0]["lr"],
                       "perf/train_img_s": n_img / max(1e-9, train_s)}
            last_epoch = stopped or epoch >= total_epochs or iteration >= total_iters
            t_eval = time.perf_counter()
            if val_ds is not None and (epoch % cfg.eval.every_epochs == 0 or last_epoch):
                if reference is None:
                    reference = DetectionAccumulator.for_dataset(val_ds)
                metrics.update(evaluate_model(model, val_ds, cfg, device, prefix=M.VAL, reference=reference))
            # The selected checkpoint: the best val epoch so far (the last epoch without a val split).
            improved = (metric_key in metrics and (best is None or metrics[metric_key] > best)) if val_ds is not None else True
            if improved:
                best, best_epoch = metrics.get(metric_key), epoch
            if last_epoch and test_ds is not None:
                metrics.update(score_test(model, test_ds, cfg, device, best_path if not improved else None,
                                          run_dir / TEST_DETECTIONS))
                metrics[M.TEST + "/selected_epoch"] = float(best_epoch)
            metrics[M.FINAL] = 1.0 if last_epoch else 0.0
            if best is not None:
                metrics[M.SCORE] = best
            device_s += time.perf_counter() - t_eval
            metrics["cost/device_hours"] = device_s / 3600.0
            history.append(metrics)
            state = checkpoint_state()
            save_checkpoint(state, last_path)
            if improved or not best_path.exists():
                save_checkpoint(state, best_path)
            with open(run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            for cb in callbacks:
                cb.on_epoch_end(epoch, metrics, run_dir)
    finally:
        progress.close()

    final = history[-1] if history else {}
    result = FitResult(best_metric=best, metrics_history=history, run_dir=run_dir, best_epoch=best_epoch,
                       epochs=epoch, iterations=iteration, final_metrics=final,
                       stopped_by_budget=stopped, metric_name=metric_key,
                       test_metrics={k: v for k, v in final.items() if k.startswith(M.TEST + "/")})
    for cb in callbacks:
        cb.on_fit_end(result)
    return result


# ---------------------------------------------------------------- checkpoints -> models


def config_from_checkpoint(state: dict[str, Any], path) -> ExperimentConfig:
    return validate_config(state["config"], source=f"{path} (config)")


def model_from_checkpoint(path, device: str | torch.device = "cpu"):
    """-> (model in eval mode, class_names, cfg) rebuilt from the config stored in the checkpoint."""
    state = load_checkpoint(path, map_location=device)
    cfg = config_from_checkpoint(state, path)
    model = build_model(cfg, len(state["class_names"]) + 1)
    load_model_state(model, state, path)
    return model.to(device).eval(), list(state["class_names"]), cfg


def evaluate_checkpoint(cfg: ExperimentConfig, checkpoint, split: str = "val") -> dict[str, float]:
    """Score `checkpoint` on `split` of `cfg`'s data (`ssdlab eval`): mAP, per-class AP, COCO AP."""
    device = resolve_device(cfg)
    state = load_checkpoint(checkpoint, map_location=device)
    class_names = list(state["class_names"])
    if cfg.data.class_names is not None and list(cfg.data.class_names) != class_names:
        raise CheckpointError(f"{checkpoint}: trained on classes {class_names}, but {cfg.source} "
                              f"data.class_names is {list(cfg.data.class_names)}")
    dataset = build_dataset(cfg, split, train=False, class_names=class_names)
    if dataset is None:
        key = "data.val_sets (or data.holdout)" if split == M.VAL else f"data.{split}_sets"
        raise ConfigError(f"{cfg.source}: {key}: empty, so there is no {split!r} split to evaluate on")
    model = build_model(cfg, len(class_names) + 1)
    load_model_state(model, state, checkpoint)
    model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return evaluate_model(model, dataset, cfg, device, prefix=split)
