"""MLflow: the store (URI checks, the schema created once, the client), the run writer (RunWriter, one per
run, idempotent), the run of `ssdlab train` (train_run), the sweep's tracker (sweep_tracker), the model
registry (registry, pyfunc_model) and `ssdlab import` (importer). Only the driver and the commands import it."""
