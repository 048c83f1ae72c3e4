"""The registered model's code (MLflow "models from code", experiments/tracking/registry.py logs this file): images in,
detections out, through ssd_core's one inference path."""
from __future__ import annotations

import mlflow
import numpy as np

from experiments.tracking.registry import COLUMNS


class SSDDetector(mlflow.pyfunc.PythonModel):
    """images uint8 [N, S, S, 3] (RGB, already at the model's input size) -> a DataFrame of detections: image
    index, label (1..C), class name, score, box xyxy in [0, 1]; the config's NMS and score threshold."""

    def load_context(self, context):
        from ssd_core.inference import model_from_checkpoint

        self.model, self.class_names, self.cfg = model_from_checkpoint(context.artifacts["checkpoint"])

    def predict(self, context, model_input, params=None):
        import pandas as pd
        import torch

        from ssd_core.inference import detect

        x = torch.as_tensor(np.asarray(model_input, dtype=np.uint8)).permute(0, 3, 1, 2).contiguous()
        det = detect(self.model, x, self.cfg, torch.device("cpu"))
        rows = []
        for i in range(x.shape[0]):
            for j in range(int(det.counts[i])):
                label = int(det.labels[i, j])
                rows.append([i, label, self.class_names[label - 1], float(det.scores[i, j]),
                             *[float(v) for v in det.boxes[i, j]]])
        return pd.DataFrame(rows, columns=COLUMNS)


mlflow.models.set_model(SSDDetector())
