"""A trial's identity (TrialKey) and what every worker needs (TrialJob, shipped once via
tune.with_parameters): the trial's ExperimentConfig is resolved in TrialJob.config, and
only there. The keys a worker's results carry."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from experiments.sweep.spec import SweepSpec
from ssd_core import rundir as RD
from ssd_core.config import ExperimentConfig, apply_overrides, resolve_data_root
from ssd_core.errors import ConfigError

OBJECTIVE = "ssdlab_objective"  # result key: the searcher's objective, fit's score so far
NO_OBJECTIVE = -1e30  # the objective before fit has a score (the score is maximised: the worst there is)


REPORTED = "reported.json"  # the Tune checkpoint's marker: the epoch reported, and the epoch of the state beside it


STATE_FILES = (RD.LAST, RD.BEST, RD.METRICS, RD.CONFIG, RD.TEST_DETECTIONS, RD.DATA_RECORD,  # a checkpoint's
               RD.DETECTIONS_PNG, RD.PR_CURVES_PNG,  # experiments/evidence.py, drawn at the final epoch
               RD.DEPLOY_RECORD)  # ssd_core.deploy.measure_run (deploy.bench), measured at the final epoch


HEAVY_FILES = (RD.LAST, RD.BEST)  # stripped from a trial's older checkpoints (the driver keeps KEEP_STATE)


KEEP_STATE = 2


NODE_KEY = "ssdlab_node"    # result key: the node that reported it (experiments.schema.Tag.NODE)


PRECISION_KEY = "ssdlab_precision"  # result key: the precision the trial trains at there (Tag.PRECISION)


DATA_KEY = "ssdlab_data"  # result key: the run dir's data record (rundir.DATA_RECORD), as JSON text


SCRATCH_ENV = "SSDLAB_SCRATCH"


META = "ssdlab"             # the key of a Tune trial config that holds the TrialKey fields


@dataclass(frozen=True)
class TrialKey:
    """Everything that makes a trial's config: the arm, the seed, the searched params (sorted pairs), and
    for a confirm run the search trial whose configuration it retrains."""

    arm: Optional[str]
    seed: int
    params: tuple = ()
    source_trial: Optional[str] = None

    @classmethod
    def of(cls, config: dict[str, Any]) -> "TrialKey":
        """From a Tune trial config: {META: {arm, seed, source_trial}, <dotted key>: value, ...}."""
        meta = config.get(META) if isinstance(config, dict) else None
        if not isinstance(meta, dict) or "seed" not in meta:
            raise ConfigError("a trial came back from Ray Tune's saved state without its ssdlab identity (arm, seed): "
                              "that state is damaged; start the sweep afresh with --restart (its MLflow runs are kept)")
        params = tuple(sorted((k, v) for k, v in config.items() if k != META))
        return cls(meta.get("arm"), int(meta["seed"]), params, meta.get("source_trial"))


@dataclass
class TrialJob:
    """What every worker needs (shipped once via tune.with_parameters)."""

    spec: SweepSpec
    train_fn: Callable
    cwd: str          # the driver's working directory: relative data paths resolve against it
    gpu: float
    storage: str      # the sweep's state (runs/ray/<name>, or a URI); Tune's checkpoints live under it
    driver_node: Optional[str] = None  # the Ray node id of the driver (its run dirs go under a local storage)
    # each trial's resolved config, per process (a driver and each worker resolve the trials they meet)
    _configs: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def config_of(self, config: dict[str, Any]) -> ExperimentConfig:
        """Trial config (Tune's `config` dict) -> the resolved ExperimentConfig, data root absolute."""
        return self.config(TrialKey.of(config))

    def config(self, key: TrialKey) -> ExperimentConfig:
        """The trial's ExperimentConfig: the one place it is resolved, once per key in each process."""
        if key not in self._configs:
            self._configs[key] = self._resolve(key)
        return self._configs[key]

    def __getstate__(self) -> dict:  # shipped to every worker without the configs this process resolved
        return {**self.__dict__, "_configs": {}}

    def _resolve(self, key: TrialKey) -> ExperimentConfig:
        """Arm + seed + searched params, the data root made absolute, and default boxes fitted to the data
        (model.prior_scales: auto) where this process can read it (else the worker fits them)."""
        from ssd_core.prior_fit import resolve_priors

        cfg = self.spec.trial_config(key.arm, key.seed, dict(key.params))
        try:
            root = resolve_data_root(cfg)
        except ConfigError:
            return cfg
        if not root.is_absolute():
            root = Path(self.cwd) / root
        cfg = apply_overrides(cfg, {"data.root": str(root)})
        try:
            return resolve_priors(cfg)
        except Exception:  # e.g. a driver that cannot read the data: fit resolves them in the worker
            return cfg


def searched_params(config: dict[str, Any]) -> dict[str, Any]:
    """The dotted config keys a trial config carries besides its `ssdlab` metadata."""
    return {k: v for k, v in config.items() if k != META}
