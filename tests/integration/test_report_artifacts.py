"""A run's logged test detections read back for the intervals (reports/artifacts.load_detections): a file that
cannot be read costs that file alone, and the report's tables name the run, the file and why."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

from experiments.schema import Artifact  # noqa: E402
from reports.artifacts import load_detections  # noqa: E402
from reports.load import SweepData  # noqa: E402
from ssd_core import rundir as RD  # noqa: E402


def detections_file(path):
    import torch

    from ssd_core.evaluate import DetectionAccumulator

    acc = DetectionAccumulator(["cell"], np.full((2, 2), 100.0),
                               {"gt_image": np.array([0, 1]), "gt_label": np.array([1, 1]),
                                "gt_boxes": np.array([[10, 10, 50, 50], [20, 20, 60, 60]], float),
                                "gt_difficult": np.zeros(2, bool)})
    acc.add(SimpleNamespace(boxes=torch.tensor([[[0.1, 0.1, 0.5, 0.5]], [[0.2, 0.2, 0.3, 0.3]]]),
                            scores=torch.tensor([[0.9], [0.8]]), labels=torch.tensor([[1], [1]]),
                            counts=torch.tensor([1, 1])), [0, 1])
    acc.save(path, image_keys=["img0", "img1"])
    return path


def test_an_unreadable_detections_file_costs_that_file_alone_and_the_tables_say_which(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("x", artifact_location=(tmp_path / "artifacts").as_uri())
    good, bad = (client.create_run(exp).info.run_id for _ in range(2))
    files = tmp_path / "files"
    (files / "good").mkdir(parents=True)
    (files / "bad").mkdir()
    client.log_artifact(good, str(detections_file(files / "good" / RD.TEST_DETECTIONS)))
    client.log_artifact(good, str(detections_file(files / "good" / RD.detections_at(1.0))), Artifact.BUDGET)
    foreign = files / "good" / RD.detections_at(0.5)   # a budget point's file that is no npz at all
    foreign.write_text("not an npz")
    client.log_artifact(good, str(foreign), Artifact.BUDGET)
    truncated = files / "bad" / RD.TEST_DETECTIONS      # a copy cut short
    truncated.write_bytes((files / "good" / RD.TEST_DETECTIONS).read_bytes()[:300])
    client.log_artifact(bad, str(truncated))

    got = load_detections(client, [good, bad], budget=True)
    assert set(got["detections"]) == {good}                    # the bad point did not cost the good run its file
    assert set(got["budget_detections"]) == {(good, 1.0)}
    assert got["detections"][good].image_ids.tolist() == ["img0", "img1"]
    why = {(rid, path): text for rid, path, text in got["unreadable_detections"]}
    point = f"{Artifact.BUDGET}/{RD.detections_at(0.5)}"
    assert set(why) == {(bad, RD.TEST_DETECTIONS), (good, point)}
    assert why[(bad, RD.TEST_DETECTIONS)].startswith("BadZipFile") and why[(good, point)].startswith("ValueError")

    data = SweepData(sweep="s", tracking_uri="", parent_id=None, arms=["a", "b"], baseline="a", search_space={},
                     metric="val/mAP50", runs=pd.DataFrame({"run_id": [good, bad], "arm": ["a", "b"],
                                                            "seed": [0.0, 1.0]}),
                     history=pd.DataFrame(), unreadable_detections=got["unreadable_detections"])
    ablation, points = data.unreadable_note(), data.unreadable_note(budget_points=True)
    assert f"b seed 1 (run {bad}): `{RD.TEST_DETECTIONS}`: BadZipFile" in ablation and point not in ablation
    assert f"a seed 0 (run {good}): `{point}`:" in points and bad not in points
    assert SweepData(**{**data.__dict__, "unreadable_detections": []}).unreadable_note() == ""


def test_the_ablation_table_says_where_its_combined_interval_has_fewer_seeds_or_none():
    """Arm `x`: the combined interval pairs 1 of 2 seeds; arm `y`: none (its detections unreadable): each gets
    a note, and `y`'s paired-t cell keeps its delta, since the combined column has none to show."""
    from experiments.schema import COUNTED
    from reports.stats import Interval
    from reports.tables import ablation_table

    runs = pd.DataFrame({"run_id": ["b0", "b1", "x0", "x1", "y0", "y1"], "arm": list("bbxxyy"),
                         "seed": [0.0, 1.0] * 3, "status": ["finished"] * 6, "reported": [0.8] * 6})
    data = SweepData(sweep="s", tracking_uri="", parent_id=None, arms=["b", "x", "y"], baseline="b",
                     search_space={}, metric="val/mAP50", runs=runs, history=pd.DataFrame(),
                     unreadable_detections=[("y0", RD.TEST_DETECTIONS, "BadZipFile: File is not a zip file")])
    one = Interval(0.05, 0.01, 0.09, 0.02, 1, "images", 0.95, 0.0, 0.02, 1000)

    def row(arm, method, interval, delta=0.04):
        return {"arm": arm, "note": "", "seeds": [0, 1], "n": 2, "mean": 0.8, "std": 0.01,
                **{s: (2 if s == "finished" else 0) for s in COUNTED}, "no_value": 0, "delta": delta,
                "low": delta - 0.03, "high": delta + 0.03, "p": 0.04, "pairs": 2, "method": method,
                "iv_low": np.nan, "iv_high": np.nan, "iv_p": np.nan, "interval": interval, "epochs_min": 2,
                "epochs_max": 2, "selected": 0, "device_hours": 0.1, "img_s": 10.0, "slope": None, "rising": ""}

    a = pd.DataFrame([row("b", "baseline", None, np.nan), row("x", "paired", one), row("y", "paired", None)])
    t = ablation_table(data, a)
    notes = " ".join(t.notes)
    assert "interval than in the paired t, where a run's test detections are missing or unreadable: x (1 of 2)." in notes
    assert "No seeds + test images interval for y:" in notes
    assert "y seed 1" not in notes and "y seed 0 (run y0): `test_detections.npz`: BadZipFile" in notes
    cells = {r[0]: r for r in t.rows}
    t_col = t.columns.index("Δ 95% CI (seeds, paired t)")
    assert cells["x"][t_col] == "[+0.010, +0.070]"           # x's delta is in the combined column
    assert cells["y"][t_col].startswith("+0.040 [+0.010, +0.070]")   # y has no combined interval: its delta here
