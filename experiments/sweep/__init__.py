"""A sweep on Ray Tune: the sweep file (spec, validate, plan), the driver (driver, tuner, ray_session, guards,
status, callback: the single MLflow writer, progress: the live view, study: Optuna's storage, storage: Ray's)
and the worker side (job, worker, checkpoints). The worker side never imports experiments.tracking or MLflow."""
