"""One epoch of training (paper section 3, "Training"): the Trainer holds what an epoch needs (the model and
its compiled twin, the optimisation, the loss, the loader) and runs SGD over the loader; `fit`
(ssd_core/train.py) drives it epoch by epoch. Each epoch re-seeds from (seed, epoch) (epoch_seed), which is
what makes a resumed run reach the same weights.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from ssd_core import metrics as M
from ssd_core.checkpoint import TrainState
from ssd_core.config import ExperimentConfig
from ssd_core.errors import NonFiniteLossError
from ssd_core.inference import autocast, prepare
from ssd_core.schedule import Progress


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """Each epoch re-seeds torch, numpy and Python from (seed, epoch): the augmentation streams
    (seeded from torch.initial_seed() in ssd_core.augment) then depend on the epoch alone, which is
    what makes a resumed run reach the same weights."""
    return (seed * 1_000_003 + epoch + 1) % 2**63


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
