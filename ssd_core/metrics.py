"""Metric names, defined once: what `fit` reports, MLflow stores and the reports read (DESIGN.md).

Selection and reporting use different splits (DESIGN.md, "Conventions"):

    val/...       the selection split (data.val_sets, or the data.holdout slice of the training
                  images): best.pt, ASHA and the Optuna objective look at it, every eval epoch
    test/...      the reported split (data.test_sets), scored ONCE, at the end of training, at the
                  selected checkpoint (best.pt: the best val epoch; the last epoch without a val split)
    test_last/... the same split at the final epoch's weights, reported beside it

Under each prefix: `mAP50` (VOC07 11-point, the paper's metric), `mAP50_area` (VOC2010+ area),
`AP50/<class>` (per-class VOC07 AP) and, on COCO data, `coco_AP`, `coco_AP50`, `coco_AP75`.
Training: `train/loss`, `train/loss_loc`, `train/loss_conf`, `train/lr`, `perf/train_img_s`,
`cost/device_hours`, and `train/loss_distill` when knowledge distillation is on (the weighted
distillation term added to the objective; `train/loss` stays the MultiBox loss, so arms compare). Two
keys without a "/" (so never MLflow metrics) go to the sweep driver with each epoch: `final` (1 on the
epoch that ended the run) tells a completed run from one a scheduler stopped, and `score` is the run's
score so far: its best `val/<eval.metric>` over epochs (the best.pt epoch).
"""
from __future__ import annotations

VAL, TEST, TEST_LAST = "val", "test", "test_last"
TEST_SELECTED = f"{TEST}/selected_epoch"  # the epoch of the checkpoint the test split was scored at (best.pt's)
# Budget points (eval.test_at): the test split at a fraction of the budget, at the checkpoint best on the
# selection split so far; logged at that epoch's step with `test_at/fraction` (the point asked for) and
# `test_at/selected_epoch`, the detections in the run dir as ssd_core.rundir.detections_at(fraction).
TEST_AT = "test_at"
TEST_AT_FRACTION, TEST_AT_SELECTED = f"{TEST_AT}/fraction", f"{TEST_AT}/selected_epoch"

TRAIN_LOSS, TRAIN_LOSS_LOC, TRAIN_LOSS_CONF = "train/loss", "train/loss_loc", "train/loss_conf"
TRAIN_LR, TRAIN_IMG_S, DEVICE_HOURS = "train/lr", "perf/train_img_s", "cost/device_hours"
# how the default boxes cover the training boxes (ssd_core/prior_fit/), logged with the first epoch: the share
# with best IoU >= 0.5 (all, class mean, per class and per COCO size) and the mean best IoU
DATA_COVERAGE, DATA_COVERAGE_CLASS_MEAN, DATA_BEST_IOU = "data/coverage50", "data/coverage50_class_mean", "data/best_iou"


def data_coverage(name: str) -> str:
    """data/coverage50/<class or small|medium|large>."""
    return f"{DATA_COVERAGE}/{name}"


# the precision the run trained at (ssd_core/precision.py): 1 when the forward ran under bf16 autocast / the
# model was in channels_last
PERF_BF16, PERF_CHANNELS_LAST = "perf/bf16", "perf/channels_last"
# system metrics of a sweep trial's worker, sampled at each epoch's end (experiments/sweep/worker.py)
SYS_CPU, SYS_RSS, SYS_GPU_UTIL, SYS_GPU_MEM = "sys/cpu_percent", "sys/rss_mb", "sys/gpu_util_percent", "sys/gpu_mem_mb"
TRAIN_LOSS_DISTILL = "train/loss_distill"
FINAL, SCORE = "final", "score"
EPOCH, ITERATION = "epoch", "iteration"
COCO_KEYS = ("AP", "AP50", "AP75")


def map50(split: str) -> str:
    return f"{split}/mAP50"


def map50_area(split: str) -> str:
    return f"{split}/mAP50_area"


def class_ap50_prefix(split: str) -> str:
    return f"{split}/AP50/"


def class_ap50(split: str, name: str) -> str:
    return class_ap50_prefix(split) + name


def coco_ap(split: str, key: str = "AP") -> str:
    return f"{split}/coco_{key}"


_BY_EVAL_METRIC = {"voc07": map50, "voc_area": map50_area, "coco": coco_ap}


def metric_for(eval_metric: str, split: str = VAL) -> str:
    """The scalar `eval.metric` names on `split`: voc07 -> val/mAP50, coco -> val/coco_AP, ..."""
    return _BY_EVAL_METRIC[eval_metric](split)


def reported_of(selection_metric: str) -> str:
    """The reported counterpart of a selection metric: val/mAP50 -> test/mAP50 (others unchanged)."""
    prefix = VAL + "/"
    return TEST + "/" + selection_metric[len(prefix):] if selection_metric.startswith(prefix) else selection_metric


def last_of(reported_metric: str) -> str:
    """test/mAP50 -> test_last/mAP50: the same metric at the final epoch's weights."""
    prefix = TEST + "/"
    return TEST_LAST + "/" + reported_metric[len(prefix):] if reported_metric.startswith(prefix) else reported_metric


LABELS = {"mAP50": "mAP@0.5", "mAP50_area": "mAP@0.5 (area)", "coco_AP": "AP", "coco_AP50": "AP50",
          "coco_AP75": "AP75"}


def label(metric: str) -> str:
    """A short human label: val/mAP50 -> 'mAP@0.5'."""
    return LABELS.get(metric.split("/", 1)[-1], metric)


# ---------------------------------------------------------------- deployment (ssd_core/deploy.py, `ssdlab deploy bench`)
# Measured once per checkpoint, on a CPU, batch 1 (ssd_core.deploy says how). Under `deploy/` for the
# PyTorch FP32 model, `deploy/onnx/` for the exported ONNX model (NMS in the graph, ONNX Runtime) and
# `deploy/int8/` for its INT8 post-training-quantized twin:
#   latency_ms       median per-image time, preprocess + forward + postprocess, all threads of the machine
#   preprocess_ms    JPEG decode (from bytes in memory) + resize to image_size (+ normalisation for PyTorch)
#   forward_ms       the network (ONNX: with the decode and softmax that close its graph)
#   postprocess_ms   decode + score threshold + per-class NMS + top-k (ONNX: the post-processing graph,
#                    which starts from decoded boxes and softmax scores)
#   ..._1thread      the same with one thread
#   mAP50            VOC07 mAP@0.5 of that model on the scored split (same images for all three)
#   model_mb         the ONNX file (deploy/checkpoint_mb: the weights-only PyTorch checkpoint), 1 MB = 1e6 bytes
# and, for the network itself, deploy/params, deploy/gflops (2 FLOPs per multiply-add, batch 1, forward
# only, at model.image_size) and deploy/threads (what "all threads" was). deploy/latency_ms is the
# second objective a sweep can minimise.
DEPLOY = "deploy"
DEPLOY_BACKENDS = ("torch", "onnx", "int8")
DEPLOY_TIMINGS = ("latency_ms", "preprocess_ms", "forward_ms", "postprocess_ms")
DEPLOY_PARAMS, DEPLOY_GFLOPS, DEPLOY_THREADS = "deploy/params", "deploy/gflops", "deploy/threads"
DEPLOY_CHECKPOINT_MB = "deploy/checkpoint_mb"


def deploy(name: str, backend: str = "torch", one_thread: bool = False) -> str:
    """deploy/latency_ms, deploy/onnx/forward_ms_1thread, deploy/int8/mAP50, deploy/int8/model_mb, ..."""
    if backend not in DEPLOY_BACKENDS:
        raise ValueError(f"deploy backend {backend!r} is not one of {DEPLOY_BACKENDS}")
    prefix = DEPLOY if backend == "torch" else f"{DEPLOY}/{backend}"
    return f"{prefix}/{name}" + ("_1thread" if one_thread else "")


DEPLOY_LATENCY = deploy("latency_ms")                       # deploy/latency_ms
DEPLOY_LATENCY_1THREAD = deploy("latency_ms", one_thread=True)
