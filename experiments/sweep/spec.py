"""Sweep files: YAML -> a validated `SweepSpec` -> a plan of phases and trials. No Ray here.

A sweep file (sweeps/*.yaml) names a base experiment config, overrides, and either ablation arms,
an Optuna search, or both (one of them is required: a single arm `{base: {}}` repeats the base
config over the seeds):

    name: voc-lr-wd-aug
    experiment: ../experiments/configs/ssd300_voc_vgg16.yaml   # relative to the sweep file
    overrides: {train.epochs: 24}
    search:                                   # optional
      sampler: tpe                            # tpe | random | grid | gp | nsga2 (SAMPLERS)
      num_samples: 32
      metric: val/mAP50
      mode: max
      seed: 0
      space:                                  # ordered; dotted config keys
        train.lr: {loguniform: [1.0e-4, 1.0e-2]}
        augment.zoom_out.p: {uniform: [0.0, 0.8]}
        train.batch_size: {int: [8, 32]}      # inclusive
        augment.photometric: {choice: [true, false]}
        augment.zoom_out.max: {uniform: [2.0, 4.0], when: {augment.photometric: true}}
      objectives: [deploy/latency_ms]         # optional: also minimise these (multi-objective; needs
                                              # deploy.bench: true, no scheduler; tpe, random or nsga2)
    scheduler: {asha: {grace_period: 2, reduction_factor: 3}}   # or none (the default)
    arms:                                     # optional, ordered; the first is the baseline
      initial:  {note: "first implementation", overrides: {augment.sample_patch.enabled: false}}
      +augment: {note: "sample patch and zoom out", overrides: {}}
    seeds: [0, 1, 2]
    resources: {cpu: 4, gpu: 0.5}             # per trial
    max_concurrent: 8
    failure: {max_failures: 2}
    tracking: {uri: sqlite:///mlflow.db, experiment: voc-lr-wd-aug, log_checkpoints: true}

Conditional parameters: `when: {key: value, ...}` samples the parameter only when every listed
key equals the value, where a key is either a parameter sampled earlier in `space` (order
matters) or, when not sampled, the trial's resolved config value. Otherwise the config keeps its
value. A grid sampler takes `choice` and `int` parameters only, without `when`.

What the combinations mean (the trial plan, `plan(spec)`):

* arms only: every arm x every seed, an explicit trial list at equal budget. No early stopping
  unless `scheduler` asks for it.
* search only: `num_samples` Optuna trials, each trained with `seeds[0]`. With more seeds, a
  *confirm* phase then retrains the best configuration (the best trial by experiments.schema.best_index:
  finished, best score, i.e. best selection metric over its epochs) with each of `seeds[1:]` at full
  budget, so the winner comes with error bars.
* arms + search: the search runs once per arm (arm overrides applied first, same space, same
  sampler seed, `num_samples` trials each; a separate Optuna study per arm), each followed by its
  confirm phase: every arm is compared at its own best hyperparameters.

Each phase is one Ray Tune experiment under `<storage>/<name>/<phase>`. Trial overrides are
applied in this order: sweep `overrides`, arm `overrides`, `train.seed`, searched parameters.
Everything is validated before anything starts; errors are `ConfigError`s naming the sweep file
and the key.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from experiments.schema import MAXIMISED, MINIMISED
from ssd_core.config import DEFAULT_TRACKING_URI, ExperimentConfig, apply_overrides

# search.sampler -> its Optuna sampler (optuna.samplers.<class>); the grid sampler takes choice and int
# parameters only; MULTI_OBJECTIVE: those that search several objectives (search.objectives)
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "grid": "GridSampler", "gp": "GPSampler",
            "nsga2": "NSGAIISampler"}
SAMPLER_NAMES = tuple(SAMPLERS)
GRID_SAMPLER = "grid"
MULTI_OBJECTIVE = ("tpe", "random", "nsga2")


_NAME = re.compile(r"^[A-Za-z0-9+][A-Za-z0-9_.+-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SearchSpec(_Strict):
    sampler: Literal[SAMPLER_NAMES] = "tpe"
    num_samples: Optional[int] = Field(None, gt=0)  # grid: defaults to the grid size
    metric: Optional[str] = None
    mode: Optional[Literal[MAXIMISED, MINIMISED]] = None  # a sweep file may say max, the one direction (validate)
    seed: int = 0
    space: dict[str, dict[str, Any]]
    # Further objectives, minimised, measured at each trial's final epoch (experiments.schema.SEARCH_OBJECTIVES):
    # the search is then multi-objective (Optuna keeps the Pareto front; the report shows it).
    objectives: list[str] = Field(default_factory=list)
    # The study's Optuna storage (experiments/sweep/study.py): null -> optuna.db beside a sqlite MLflow store (or the
    # local Ray storage), a SQLAlchemy URL (PostgreSQL on a cluster; never MLflow's database), or `memory`.
    storage: Optional[str] = None


class AshaSpec(_Strict):
    grace_period: int = Field(1, gt=0)
    reduction_factor: float = Field(3, gt=1)
    max_t: Optional[int] = Field(None, gt=0)  # null -> train.epochs of the resolved config


class SchedulerSpec(_Strict):
    asha: Optional[AshaSpec] = None


class ArmSpec(_Strict):
    note: str = ""
    overrides: dict[str, Any] = Field(default_factory=dict)


class SequentialSeeds(_Strict):
    """`seeds: {start, max, ...}`: seeds added in waves until each arm's delta is decided
    (experiments/sequential.py); seeds are 0..max-1."""

    start: int = Field(2, ge=2)
    max: int = Field(8, ge=2)
    step: int = Field(1, ge=1)
    until: Literal["decided"] = "decided"
    width: Optional[float] = Field(None, gt=0)        # also stop an arm when its interval is this narrow
    max_device_hours: Optional[float] = Field(None, gt=0)
    alpha: float = Field(0.05, gt=0, lt=0.5)
    spending: Literal["pocock", "obrien_fleming"] = "pocock"


class ResourcesSpec(_Strict):
    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)


class FailureSpec(_Strict):
    max_failures: int = Field(0, ge=0)


class TrackingSpec(_Strict):
    uri: str = DEFAULT_TRACKING_URI
    experiment: Optional[str] = None  # null -> the sweep name
    log_checkpoints: bool = True


class SweepFile(_Strict):
    """The YAML schema (structure only; `load_sweep` adds the cross-checks)."""

    name: str
    experiment: str
    description: str = ""
    overrides: dict[str, Any] = Field(default_factory=dict)
    search: Optional[SearchSpec] = None
    scheduler: Optional[SchedulerSpec] = None  # `none` in the file reads as null
    arms: Optional[dict[str, ArmSpec]] = None
    design: Optional[dict[str, Any]] = None  # factors -> design points (experiments/design.py); arms besides them
    seeds: Union[list[int], SequentialSeeds] = Field(default_factory=lambda: [0])
    metric: Optional[str] = None  # for arms-only sweeps with a scheduler; search.metric wins
    mode: Optional[Literal[MAXIMISED, MINIMISED]] = None
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    max_concurrent: Optional[int] = Field(None, gt=0)
    max_trials: int = Field(10_000, gt=0)  # a plan larger than this is refused before it is built
    failure: FailureSpec = Field(default_factory=FailureSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)


@dataclass
class SweepSpec:
    """A validated sweep: the file's fields plus the resolved base config."""

    path: Path
    file: SweepFile
    base: ExperimentConfig       # base experiment + sweep overrides
    metric: str
    arms: dict[str, ArmSpec] = field(default_factory=dict)  # the design's points, then the file's arms
    design: Optional[Any] = None  # experiments.design.Design

    @property
    def name(self) -> str:
        return self.file.name

    @property
    def arm_names(self) -> list[str]:
        return list(self.arms)

    @property
    def experiment_name(self) -> str:
        return self.file.tracking.experiment or self.file.name

    @property
    def asha(self) -> Optional[AshaSpec]:
        return self.file.scheduler.asha if self.file.scheduler else None

    @property
    def sequential(self) -> Optional[SequentialSeeds]:
        """The sequential seeding settings (None for a fixed seed list)."""
        seeds = self.file.seeds
        return seeds if isinstance(seeds, SequentialSeeds) else None

    @property
    def seeds(self) -> list[int]:
        """Every seed the sweep may train: the list, or 0..max-1 for sequential seeding."""
        seq = self.sequential
        return list(range(seq.max)) if seq is not None else list(self.file.seeds)

    def waves(self):
        """The wave planner of a sequentially seeded sweep (experiments.sequential.Waves), None otherwise."""
        from experiments.sequential import Waves

        seq = self.sequential
        if seq is None:
            return None
        return Waves(self.arm_names, seq.start, seq.max, seq.step, seq.alpha, seq.spending, seq.width,
                     seq.max_device_hours)

    def arm_overrides(self, arm: Optional[str]) -> dict[str, Any]:
        return dict(self.arms[arm].overrides) if arm else {}

    def trial_config(self, arm: Optional[str], seed: int, params: dict[str, Any] | None = None) -> ExperimentConfig:
        """The trial's config: `base` (with the sweep overrides) + arm, seed and searched params."""
        return apply_overrides(self.base, {**self.arm_overrides(arm), "train.seed": seed, **(params or {})})

    @property
    def base_config_path(self) -> Path:
        return (self.path.parent / self.file.experiment).resolve()

    def max_t(self, arm: Optional[str] = None) -> int:
        asha = self.asha
        if asha and asha.max_t:
            return asha.max_t
        return self.trial_config(arm, self.seeds[0]).train.epochs
