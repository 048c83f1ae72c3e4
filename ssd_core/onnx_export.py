"""The ONNX model of a trained SSD: the network with decode and softmax (export_core), the post-processing
as an ONNX graph (NonMaxSuppression inside), both in one file (`ssdlab export`), its INT8 post-training
quantization, and its mAP. torch, and (imported when used) onnx, onnxruntime; ssd_core/deploy.py measures
what it costs.

    export_core(model)                          ONNX: uint8 images -> decoded boxes, class scores
    postprocess_model / add_postprocess         ONNX: ... -> final boxes, scores, labels, counts
    export_onnx(model, path, settings)          both in one file: `ssdlab export CHECKPOINT --onnx out.onnx`
    quantize_core(core, calibration)            the network with INT8 convolutions (ONNX Runtime, static)
    detections_of(outputs)                      the model's outputs as ssd_core.postprocess.Detections
    compare_detections(ref, got)                parity with ssd_core.postprocess, detection by detection
    evaluate_onnx(session, dataset, cfg)        VOC mAP of an ONNX model (the accumulator evaluate_model uses)

The ONNX model (the contract of `ssdlab export`):

    input   images  uint8 [B, 3, S, S]: RGB resized to model.image_size (ssd_core.augment.ResizeOnly);
                    the base network's normalisation is inside the graph
    output  boxes   float32 [B, D, 4] xyxy in [0, 1]     scores  float32 [B, D]
            labels  int64 [B, D] 1..C-1 (0 = padding)    counts  int64 [B]
    (ssd_core.postprocess.Detections, D = eval.max_detections, rows past counts[b] zero)

The post-processing graph reproduces ssd_core.postprocess.postprocess: boxes decoded with the variances
(0.1, 0.2) and clipped to [0, 1], softmax, per class the top_k best scores (TopK + ScatterElements: the
others are zeroed), ONNX NonMaxSuppression (per-class greedy NMS, IoU > nms_threshold suppresses, score >
score_threshold) with max_output_boxes_per_class = top_k, then per image the max_detections best
survivors of all classes (ScatterND into a dense [B, (C-1) P] score map, TopK). Known differences, all at
exact ties or at the thresholds' rounding edge: the threshold is tested on softmax scores (postprocess
tests logits against log-sum-exp + log threshold), IoU is ONNX Runtime's own float arithmetic, and equal
scores may come out in another order.

INT8 (why ONNX Runtime static quantization, not PT2E): torch 2.14 no longer ships torch.ao's PT2E flow
(prepare_pt2e / X86InductorQuantizer live in the separate torchao package now), and a PT2E model gets INT8
kernels only through torch.compile's Inductor: measured, that was slower than ONNX Runtime INT8 even after
a long first compile, while ONNX Runtime needs no compile and no extra package (the figures, with device
and model: docs/deploy_timings.md). ONNX Runtime quantizes the graph `ssdlab export` already produces, and
the result is one deployable file with the NMS inside. Quantized: convolutions with their ReLU / ReLU6
folded in (QDQ; weights int8 per output channel, activations uint8, min-max ranges from training images);
everything after the heads (decode, softmax, NMS) stays float. Quantizing the convolutions alone leaves a
float ReLU6 between every pair (dequantize, clip, quantize), which measured clearly slower
(docs/deploy_timings.md).
"""
from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import Iterable, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssd_core import metrics as M
from ssd_core.boxes import VARIANCES, decode
from ssd_core.errors import UserError
from ssd_core.postprocess import NMSSettings

OPSET = 20
INPUT = "images"
CORE_OUTPUTS = ("decoded_boxes", "class_scores")      # [B, P, 4] xyxy in [0, 1]; [B, C-1, P] softmax
OUTPUTS = ("boxes", "scores", "labels", "counts")       # ssd_core.postprocess.Detections
INT8_OP_TYPES = ("Conv", "Clip", "Relu")  # ReLU / ReLU6 fold into the quantized convolution's output range


class DeployDependencyError(UserError):
    """onnx / onnxruntime are not installed."""


def _require(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise DeployDependencyError(f"{module} is not installed: pip install -e '.[deploy]' (onnx, onnxruntime, "
                                    f"onnxscript)") from None


def detections_of(outputs: Sequence[np.ndarray]):
    """The ONNX model's (boxes, scores, labels, counts) -> ssd_core.postprocess.Detections (torch)."""
    from ssd_core.postprocess import Detections

    boxes, scores, labels, counts = (torch.from_numpy(np.asarray(o)) for o in outputs[:4])
    return Detections(boxes.float(), scores.float(), labels.long(), counts.long())


class Parity(NamedTuple):
    images: int
    detections: int          # in the reference
    matched: int             # found in the other with the same label, score and box within the tolerances
    max_box_diff: float      # over matched pairs, in [0, 1] image coordinates
    max_score_diff: float

    @property
    def ok(self) -> bool:
        return self.matched == self.detections

    def __str__(self) -> str:
        return (f"{self.matched}/{self.detections} detections of {self.images} images matched (same label, "
                f"|d score| max {self.max_score_diff:.2g}, |d box| max {self.max_box_diff:.2g})")


def compare_detections(ref, got, box_tol: float = 1e-4, score_tol: float = 1e-5) -> Parity:
    """Do two Detections hold the same detections per image? Each of `ref`'s is matched (greedily, in
    score order) to an unmatched one of `got` with the same label, |score difference| <= score_tol and
    every box coordinate within box_tol: as sets, so near-equal scores in swapped order still match.
    An image whose counts differ has its surplus unmatched."""
    matched, total, box_d, score_d = 0, 0, 0.0, 0.0
    for b in range(ref.scores.shape[0]):
        n, k = int(ref.counts[b]), int(got.counts[b])
        total += n
        free = torch.ones(k, dtype=torch.bool)
        for i in range(n):
            ok = (got.labels[b, :k] == ref.labels[b, i]) & free
            ds = (got.scores[b, :k] - ref.scores[b, i]).abs()
            db = (got.boxes[b, :k] - ref.boxes[b, i]).abs().amax(dim=-1)
            ok &= (ds <= score_tol) & (db <= box_tol)
            if ok.any():
                j = int(torch.where(ok, ds, torch.inf).argmin())
                free[j] = False
                matched += 1
                box_d, score_d = max(box_d, float(db[j])), max(score_d, float(ds[j]))
    return Parity(ref.scores.shape[0], total, matched, box_d, score_d)


# ---------------------------------------------------------------- ONNX export


class _Core(nn.Module):
    """uint8 images -> (decoded xyxy boxes [B, P, 4] in [0, 1], foreground softmax scores [B, C-1, P])."""

    def __init__(self, model: nn.Module, variances=VARIANCES):
        super().__init__()
        self.model, self.variances = model, tuple(variances)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        loc, conf = self.model(self.model.normalize(images))
        boxes = decode(loc.float(), self.model.priors, self.variances).clamp(0, 1)
        scores = F.softmax(conf.float(), dim=-1)[..., 1:].transpose(1, 2)
        return boxes, scores


def export_core(model: nn.Module):
    """The network as an ONNX ModelProto (torch.onnx.export, dynamo): uint8 images [B, 3, S, S] (B dynamic)
    -> decoded_boxes [B, P, 4], class_scores [B, C-1, P]. The model is exported in eval mode on the CPU."""
    onnx = _require("onnx")
    _require("onnxscript")
    was_training = model.training
    model.eval()
    core = _Core(model).eval()
    example = torch.zeros(2, 3, model.image_size, model.image_size, dtype=torch.uint8)
    try:
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            path = Path(tmp) / "core.onnx"
            torch.onnx.export(core, (example,), str(path), dynamo=True, opset_version=OPSET,
                              input_names=[INPUT], output_names=list(CORE_OUTPUTS),
                              dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=4096)}},
                              external_data=False, verbose=False)
            proto = onnx.load(str(path))
    finally:
        model.train(was_training)
    return proto


def _postprocess_graph(num_priors: int, num_classes: int, settings: NMSSettings, boxes: str = CORE_OUTPUTS[0],
                       scores: str = CORE_OUTPUTS[1], prefix: str = "post/"):
    """Nodes + initializers of the post-processing (module docstring) reading `boxes` [B, P, 4] and `scores`
    [B, C-1, P]; writes OUTPUTS. -> (nodes, initializers, output value infos)."""
    from onnx import TensorProto, helper, numpy_helper

    P, K = int(num_priors), int(num_classes) - 1
    kk, D = min(settings.top_k, P), min(settings.max_detections, K * P)
    n = lambda name: prefix + name  # noqa: E731
    consts = {
        "top_k": np.array([kk], np.int64), "iou": np.array([settings.nms_threshold], np.float32),
        "score_threshold": np.array([settings.score_threshold], np.float32), "D": np.array([D], np.int64),
        "P": np.array(P, np.int64), "one": np.array(1, np.int64), "zero_i": np.array(0, np.int64),
        "zero_f": np.array(0.0, np.float32), "col0": np.array(0, np.int64), "col1": np.array(1, np.int64),
        "col2": np.array(2, np.int64), "axis1": np.array([1], np.int64), "axis2": np.array([2], np.int64),
        "start0": np.array([0], np.int64), "end1": np.array([1], np.int64), "KP": np.array([K * P], np.int64),
    }
    inits = [numpy_helper.from_array(v, n(k)) for k, v in consts.items()]
    fill = lambda value: helper.make_tensor("value", TensorProto.FLOAT, [1], [value])  # noqa: E731
    pad = settings.max_detections - D
    final = {o: (n(o + "_unpadded") if pad else o) for o in OUTPUTS}
    node = helper.make_node
    nodes = [
        # per class, the top_k best scores; the rest zeroed (NMS then ignores them: score > threshold >= 0)
        node("TopK", [scores, n("top_k")], [n("cand_scores"), n("cand_index")], axis=2, largest=1, sorted=1),
        node("Shape", [scores], [n("scores_shape")]),
        node("ConstantOfShape", [n("scores_shape")], [n("zeros")], value=fill(0.0)),
        node("ScatterElements", [n("zeros"), n("cand_index"), n("cand_scores")], [n("candidates")], axis=2),
        # per-class greedy NMS: [M, 3] (image, class - 1, prior)
        node("NonMaxSuppression", [boxes, n("candidates"), n("top_k"), n("iou"), n("score_threshold")],
             [n("selected")], center_point_box=0),
        node("GatherND", [n("candidates"), n("selected")], [n("selected_scores")]),
        node("Gather", [n("selected"), n("col0")], [n("image")], axis=1),
        node("Gather", [n("selected"), n("col1")], [n("cls")], axis=1),
        node("Gather", [n("selected"), n("col2")], [n("prior")], axis=1),
        # the survivors in a dense [B, (C-1) P] map (-1 elsewhere), then per image the best max_detections
        node("Mul", [n("cls"), n("P")], [n("cls_offset")]),
        node("Add", [n("cls_offset"), n("prior")], [n("flat")]),
        node("Unsqueeze", [n("image"), n("axis1")], [n("image_col")]),
        node("Unsqueeze", [n("flat"), n("axis1")], [n("flat_col")]),
        node("Concat", [n("image_col"), n("flat_col")], [n("where")], axis=1),
        node("Slice", [n("scores_shape"), n("start0"), n("end1")], [n("batch")]),
        node("Concat", [n("batch"), n("KP")], [n("dense_shape")], axis=0),
        node("ConstantOfShape", [n("dense_shape")], [n("empty")], value=fill(-1.0)),
        node("ScatterND", [n("empty"), n("where"), n("selected_scores")], [n("survivors")]),
        node("TopK", [n("survivors"), n("D")], [n("top"), n("top_index")], axis=1, largest=1, sorted=1),
        node("Div", [n("top_index"), n("P")], [n("top_cls")]),
        node("Add", [n("top_cls"), n("one")], [n("top_label")]),
        node("Mod", [n("top_index"), n("P")], [n("top_prior")]),
        node("Unsqueeze", [n("top_prior"), n("axis2")], [n("top_prior_col")]),
        node("GatherND", [boxes, n("top_prior_col")], [n("top_boxes")], batch_dims=1),
        node("GreaterOrEqual", [n("top"), n("zero_f")], [n("valid")]),
        node("Unsqueeze", [n("valid"), n("axis2")], [n("valid_col")]),
        node("Where", [n("valid_col"), n("top_boxes"), n("zero_f")], [final["boxes"]]),
        node("Where", [n("valid"), n("top"), n("zero_f")], [final["scores"]]),
        node("Where", [n("valid"), n("top_label"), n("zero_i")], [final["labels"]]),
        node("Cast", [n("valid")], [n("valid_int")], to=TensorProto.INT64),
        node("ReduceSum", [n("valid_int"), n("axis1")], [final["counts"]], keepdims=0),
    ]
    if pad:  # fewer (class, prior) pairs than max_detections: pad to D like postprocess
        inits += [numpy_helper.from_array(np.array([0, 0, 0, 0, pad, 0], np.int64), n("pad3")),
                  numpy_helper.from_array(np.array([0, 0, 0, pad], np.int64), n("pad2"))]
        nodes += [node("Pad", [final["boxes"], n("pad3")], ["boxes"]),
                  node("Pad", [final["scores"], n("pad2")], ["scores"]),
                  node("Pad", [final["labels"], n("pad2")], ["labels"]),
                  node("Identity", [final["counts"]], ["counts"])]
    Dm = settings.max_detections
    outputs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", Dm, 4]),
               helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", Dm]),
               helper.make_tensor_value_info("labels", TensorProto.INT64, ["batch", Dm]),
               helper.make_tensor_value_info("counts", TensorProto.INT64, ["batch"])]
    return nodes, inits, outputs


def postprocess_model(num_priors: int, num_classes: int, settings: NMSSettings, like=None):
    """The post-processing alone as an ONNX model: decoded_boxes [B, P, 4], class_scores [B, C-1, P] ->
    OUTPUTS. `like`: a ModelProto whose opset and IR version to use (the core it follows)."""
    onnx = _require("onnx")
    from onnx import TensorProto, helper

    nodes, inits, outputs = _postprocess_graph(num_priors, num_classes, settings)
    inputs = [helper.make_tensor_value_info(CORE_OUTPUTS[0], TensorProto.FLOAT, ["batch", num_priors, 4]),
              helper.make_tensor_value_info(CORE_OUTPUTS[1], TensorProto.FLOAT, ["batch", num_classes - 1, num_priors])]
    graph = helper.make_graph(nodes, "ssd_postprocess", inputs, outputs, initializer=inits)
    opsets = list(like.opset_import) if like is not None else [helper.make_opsetid("", OPSET)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = like.ir_version if like is not None else onnx.IR_VERSION
    onnx.checker.check_model(model)
    return model


def add_postprocess(core, num_priors: int, num_classes: int, settings: NMSSettings, metadata=None):
    """A copy of `core` (export_core or quantize_core) with the post-processing appended: images -> OUTPUTS."""
    onnx = _require("onnx")

    model = onnx.ModelProto()
    model.CopyFrom(core)
    nodes, inits, outputs = _postprocess_graph(num_priors, num_classes, settings)
    g = model.graph
    g.node.extend(nodes)
    g.initializer.extend(inits)
    del g.output[:]
    g.output.extend(outputs)
    if not any(o.domain in ("", "ai.onnx") and o.version >= 11 for o in model.opset_import):
        raise ValueError("add_postprocess: the core's opset is below 11 (NonMaxSuppression)")
    for key, value in {**settings._asdict(), **(metadata or {})}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"ssdlab.{key}", value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(model)
    return model


def export_onnx(model: nn.Module, path, settings: NMSSettings, class_names: Sequence[str] = (), core=None):
    """`ssdlab export`: the model with its post-processing as one ONNX file (module docstring). -> Path."""
    onnx = _require("onnx")
    core = core if core is not None else export_core(model)
    full = add_postprocess(core, model.priors.shape[0], model.num_classes, settings,
                           {"class_names": list(class_names), "image_size": int(model.image_size)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(full, str(path))
    return path


# ---------------------------------------------------------------- INT8


def quantize_core(core, calibration: Iterable[np.ndarray], op_types: Sequence[str] = INT8_OP_TYPES,
                  per_channel: bool = True):
    """ONNX Runtime static post-training quantization of the network graph (export_core): QDQ, int8 weights
    per output channel, uint8 activations, min-max ranges from `calibration` (uint8 [1, 3, S, S] arrays,
    training images). Only `op_types` are quantized; decode, softmax and NMS stay float. -> ModelProto."""
    onnx = _require("onnx")
    _require("onnxruntime")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [np.ascontiguousarray(x, dtype=np.uint8) for x in calibration]
    if not batches:
        raise ValueError("quantize_core: no calibration images")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {INPUT: x}

    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (str(Path(tmp) / f) for f in ("core.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(core, src)
        quant_pre_process(src, pre)  # shape inference + graph optimisation (the quantizer's recommended input)
        quantize_static(pre, out, Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(op_types), calibrate_method=CalibrationMethod.MinMax)
        return onnx.load(out)


def calibration_images(cfg, class_names, count: int = 64) -> list[np.ndarray]:
    """`count` training images (evenly spaced over data.train_sets, evaluation resize, no augmentation)."""
    from ssd_core.build import build_dataset

    ds = build_dataset(cfg, "train", train=False, class_names=class_names)
    idx = np.unique(np.linspace(0, len(ds) - 1, min(count, len(ds))).round().astype(int))
    return [ds[int(i)][0][None].numpy() for i in idx]


# ---------------------------------------------------------------- accuracy


def evaluate_onnx(sess, dataset, cfg, prefix: str = M.TEST, batch_size: Optional[int] = None) -> dict[str, float]:
    """VOC07 and area mAP@0.5 (and per-class AP) of an ONNX model (export_onnx's contract) on `dataset`, named `<prefix>/...`
    like ssd_core.inference.evaluate_model (the same loader and accumulator)."""
    from ssd_core.evaluate import DetectionAccumulator
    from ssd_core.inference import eval_loader, voc_metrics

    ref = DetectionAccumulator.for_dataset(dataset)
    for batch in eval_loader(dataset, cfg, torch.device("cpu"), batch_size):
        ref.add(detections_of(sess.run(None, {INPUT: batch.images.numpy()})), batch.indices)
    return voc_metrics(ref, prefix)
