"""The best trial's model in MLflow's model registry as a real MLflow model: a pyfunc that takes images and
returns detections, with a signature and an input example, logged as an MLflow 3 LoggedModel of the trial's
run and registered with the alias `best`.

    model = mlflow.pyfunc.load_model("models:/<name>@best")
    detections = model.predict(images)     # uint8 [N, S, S, 3] (S = model.image_size) -> one row per detection

Driver side only (MLflow); the model itself is ssd_core's (ssd_core.inference.model_from_checkpoint).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import mlflow
import numpy as np

from experiments.tracking.store import using_tracking_uri
from ssd_core import rundir as RD

ALIAS = "best"
COLUMNS = ["image", "label", "class", "score", "x1", "y1", "x2", "y2"]  # the model's output (pyfunc_model.py)


def register(client, experiment_id: str, run_id: str, name: str, image_size: int, description: str = "",
             tags: Optional[dict] = None) -> Optional[str]:
    """Log the run's weights-only checkpoint (artifact checkpoints/best.pt) as a pyfunc LoggedModel of the run,
    register it as a new version of `name` with the alias `best`; returns "<name>/<version>" (None when the
    run has no checkpoint)."""
    from mlflow.models import infer_signature

    from experiments.schema import Artifact

    with tempfile.TemporaryDirectory(prefix="ssdlab-register-") as tmp:
        try:
            ckpt = client.download_artifacts(run_id, f"{Artifact.CHECKPOINTS}/{RD.BEST}", tmp)
        except Exception:
            return None
        example = np.zeros((1, image_size, image_size, 3), dtype=np.uint8)
        out = Path(tmp) / "model"
        # "models from code": the model is this file's class, not a pickle (loading it runs no pickled code)
        import logging
        import warnings

        import pandas as pd

        with warnings.catch_warnings():  # MLflow's hints about type hints and integer columns
            warnings.simplefilter("ignore")
            level = logging.getLogger("mlflow").level
            logging.getLogger("mlflow").setLevel(logging.WARNING)
            try:
                signature = infer_signature(example, pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
                    COLUMNS, ["int64", "int64", "str", "float64", "float64", "float64", "float64", "float64"])}))
                mlflow.pyfunc.save_model(out, python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                                         artifacts={"checkpoint": ckpt}, signature=signature, input_example=example,
                                         pip_requirements=_requirements())
            finally:
                logging.getLogger("mlflow").setLevel(level)
        logged = client.create_logged_model(experiment_id, name="model", source_run_id=run_id,
                                            tags={k: str(v) for k, v in (tags or {}).items()})
        client.log_model_artifacts(logged.model_id, str(out))
        client.finalize_logged_model(logged.model_id, "READY")
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(name, description=description)
    with using_tracking_uri(client.tracking_uri):  # the registry looks the logged model up in the global store
        version = client.create_model_version(name, source=f"models:/{logged.model_id}", run_id=run_id,
                                              model_id=logged.model_id, tags={k: str(v) for k, v in (tags or {}).items()},
                                              description=description)
    client.set_registered_model_alias(name, ALIAS, version.version)
    return f"{name}/{version.version}"


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("torch", "torchvision", "numpy", "pandas", "pydantic", "pyyaml", "ssdlab"):
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue
    return out
