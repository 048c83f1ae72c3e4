"""The detections of an evaluation, gathered batch by batch: padded `Detections` (xyxy in [0, 1]) -> flat
arrays in original pixels, with the dataset's ground truth; scored by VOC (voc.py) or written as COCO
results (coco.py), and saved as one .npz that re-scores without the model.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from ssd_core.evaluate.ap import _np
from ssd_core.evaluate.coco import to_coco_results
from ssd_core.evaluate.voc import VOCMatches, evaluate_voc, voc_matches


class DetectionAccumulator:
    """Collects padded `Detections` (xyxy in [0, 1]) batch by batch as flat arrays in original pixels.

        acc = DetectionAccumulator.for_dataset(val_set)       # ground truth + (w, h) per image
        for batch in loader:
            acc.add(postprocess(*model(x), priors), batch.indices)
        metrics = acc.evaluate()                              # evaluate_voc(...) dict

    Each `add` is vectorised over the batch: a validity mask (slot < count, label > 0), one multiply
    by (w, h, w, h) per image, one boolean gather.
    """

    def __init__(self, class_names: Sequence[str], image_sizes=None, ground_truth: Mapping | None = None):
        self.class_names = list(class_names)
        self.image_sizes = None if image_sizes is None else torch.as_tensor(_np(image_sizes, np.float64))
        self.ground_truth = dict(ground_truth) if ground_truth is not None else None
        self._chunks: list[tuple[torch.Tensor, ...]] = []

    @classmethod
    def for_dataset(cls, dataset) -> "DetectionAccumulator":
        sizes = [dataset.image_size(i) for i in range(len(dataset))]
        return cls(dataset.class_names, np.asarray(sizes, np.float64).reshape(-1, 2),
                   ground_truth_from_dataset(dataset))

    def add(self, detections, image_ids, image_sizes=None) -> None:
        """detections: Detections (boxes [B, D, 4], scores, labels, counts); image_ids [B];
        image_sizes [B, 2] (w, h), or looked up by id in the sizes given at construction."""
        boxes, scores = detections.boxes.detach().cpu(), detections.scores.detach().cpu()
        labels, counts = detections.labels.detach().cpu(), detections.counts.detach().cpu()
        ids = torch.as_tensor(_np(image_ids, np.int64)).reshape(-1)
        batch, slots = scores.shape
        if image_sizes is None:
            if self.image_sizes is None:
                raise ValueError("DetectionAccumulator.add: image_sizes not given and none known at construction")
            image_sizes = self.image_sizes[ids]
        wh = torch.as_tensor(_np(image_sizes, np.float64)).reshape(batch, 2)
        valid = (torch.arange(slots)[None, :] < counts.reshape(-1, 1)) & (labels > 0)
        pixels = boxes.double() * wh.repeat(1, 2)[:, None, :]
        self._chunks.append((ids[:, None].expand(batch, slots)[valid], labels[valid].long(),
                             scores[valid].double(), pixels[valid]))

    def arrays(self) -> dict[str, np.ndarray]:
        """The flat detections: det_image [N], det_label [N], det_score [N], det_boxes [N, 4] (pixels)."""
        if not self._chunks:
            return {"det_image": np.zeros(0, np.int64), "det_label": np.zeros(0, np.int64),
                    "det_score": np.zeros(0), "det_boxes": np.zeros((0, 4))}
        parts = [torch.cat(column).numpy() for column in zip(*self._chunks)]
        return dict(zip(("det_image", "det_label", "det_score", "det_boxes"), parts))

    def matches(self, iou_threshold: float = 0.5) -> VOCMatches:
        """The VOC matching of these detections (for weighted re-scoring, e.g. a bootstrap)."""
        if self.ground_truth is None:
            raise ValueError("DetectionAccumulator.matches: no ground truth (use for_dataset or pass ground_truth)")
        return voc_matches(**self.arrays(), **self.ground_truth, class_names=self.class_names,
                           iou_threshold=iou_threshold)

    def evaluate(self, iou_threshold: float = 0.5) -> dict:
        if self.ground_truth is None:
            raise ValueError("DetectionAccumulator.evaluate: no ground truth (use for_dataset or pass ground_truth)")
        return evaluate_voc(**self.arrays(), **self.ground_truth, class_names=self.class_names,
                            iou_threshold=iou_threshold)

    def save(self, path, image_keys: Sequence[str] | None = None) -> None:
        """The detections with their ground truth as one compressed .npz (no pickles): enough to
        re-score any VOC metric, or a bootstrap resample of the images, without the model.
        `image_keys[i]` names image i (e.g. "BCCD/BloodImage_00001")."""
        if self.ground_truth is None:
            raise ValueError("DetectionAccumulator.save: no ground truth to save with the detections")
        n = 0 if self.image_sizes is None else len(self.image_sizes)
        keys = np.asarray([str(k) for k in (image_keys if image_keys is not None else range(n))], dtype=str)
        sizes = np.zeros((0, 2)) if self.image_sizes is None else self.image_sizes.numpy()
        np.savez_compressed(path, **self.arrays(), **self.ground_truth, image_sizes=sizes, image_keys=keys,
                            class_names=np.asarray(self.class_names, dtype=str))

    @classmethod
    def load(cls, path) -> "DetectionAccumulator":
        """An accumulator holding what `save` wrote (its `evaluate()` gives the same numbers)."""
        with np.load(path, allow_pickle=False) as z:
            acc = cls([str(c) for c in z["class_names"]], z["image_sizes"],
                      {k: z[k] for k in ("gt_image", "gt_label", "gt_boxes", "gt_difficult")})
            acc.image_keys = [str(k) for k in z["image_keys"]]
            det = [torch.from_numpy(z[k]) for k in ("det_image", "det_label", "det_score", "det_boxes")]
        acc._chunks = [tuple(det)]
        return acc

    def coco_results(self, label_to_category: Mapping[int, int] | Sequence[int],
                     image_id_map: Mapping | Sequence | None = None) -> list[dict]:
        return to_coco_results(**self.arrays(), label_to_category=label_to_category, image_id_map=image_id_map)


def ground_truth_from_dataset(dataset) -> dict[str, np.ndarray]:
    """Flat ground truth of a dataset with `annotation(i) -> Target` (original pixels, difficult kept).

    Image ids are dataset indices, as `Batch.indices`. One annotation read per image (not a hot path).
    """
    targets = [dataset.annotation(i) for i in range(len(dataset))]
    counts = [len(_np(t.labels)) for t in targets]
    cat = lambda parts, dtype, shape: (np.concatenate([_np(p, dtype).reshape(shape) for p in parts])
                                       if parts else np.zeros((0,) + shape[1:], dtype))
    return {
        "gt_image": np.repeat(np.arange(len(targets)), counts),
        "gt_label": cat([t.labels for t in targets], np.int64, (-1,)),
        "gt_boxes": cat([t.boxes for t in targets], np.float64, (-1, 4)),
        "gt_difficult": cat([t.difficult for t in targets], bool, (-1,)),
    }
