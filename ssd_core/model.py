"""SSD = base network + extra feature layers + 3x3 conv predictors (Liu et al. 2016, section 2.1, Fig. 2).

    images -> base taps (backbones.py) -> extra layers down to 1x1 -> per map: loc head (A*4 ch) and
    conf head (A*C ch) -> concatenated in (map, h, w, anchor) order, the order of the default boxes.

Extra layers (paper conv8_2 ... conv11_2; conv12_2 for SSD512) are 1x1 conv to `mid` channels then a
3x3 conv to `out` channels, each with ReLU (and BatchNorm for the ResNet/MobileNet/EfficientNet bases).
Their shape is chosen from the size n of the map they receive, which the build measures with a dry run
on the meta device (no compute), so any input size works:

    n >= 6 or n == 4  3x3, stride 2, pad 1   halves the map (conv8_2, conv9_2: 19 -> 10 -> 5)
    n == 3 or n == 5  3x3, no padding        n - 2 (conv10_2, conv11_2 at 300 px: 5 -> 3 -> 1)
    n == 2            4x4, pad 1             1x1 (SSD512's conv12_2: 2 -> 1)
    n == 1            no more extra layers: a layer that would shrink the map below 1x1 is dropped

This reproduces 38, 19, 10, 5, 3, 1 at 300 px and 64, 32, 16, 8, 4, 2, 1 at 512 px, and gives e.g.
16, 8, 4, 2, 1 (VGG16, 128 px) or 20, 10, 5, 3, 1 (160 px). The default boxes are then laid out on
the feature-map sizes the network really produces (priors.model_prior_spec), and the SSD is handed them, as
torchvision's SSD is handed its anchor generator: the model section -> default boxes translation lives beside
the default boxes (priors.py), not here.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torchvision
from torch import Tensor, nn

from ssd_core.backbones import IMAGENET_MEAN, IMAGENET_STD, Base, build_base, xavier_init
from ssd_core.errors import ConfigError
from ssd_core.priors import PriorSpec, default_boxes, model_prior_spec

if TYPE_CHECKING:
    from ssd_core.config import ModelConfig



def normalize(images: Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Tensor:
    """uint8 or float images [B, 3, H, W] in 0..255 -> float (x - mean) / std, ImageNet statistics by default.

    mean and std are in 0..255 units. SSD.normalize uses the statistics its base network expects.
    """
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.float() - mean_t) / std_t


def extra_layer_shape(n: int) -> tuple[int, int, int] | None:
    """(kernel, stride, padding) of the extra layer fed an n x n map, None when n == 1 (module docstring)."""
    if n <= 1:
        return None
    if n == 2:
        return 4, 1, 1
    if n in (3, 5):
        return 3, 1, 0
    return 3, 2, 1


def conv_output_size(n: int, kernel: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - kernel) // stride + 1


def extra_layer(in_ch: int, mid: int, out: int, kernel: int, stride: int, padding: int, batch_norm: bool) -> nn.Sequential:
    """1x1 conv to mid channels, then kernel x kernel conv to out channels; ReLU (and BatchNorm)."""
    if not batch_norm:
        return nn.Sequential(
            nn.Conv2d(in_ch, mid, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out, kernel_size=kernel, stride=stride, padding=padding),
            nn.ReLU(inplace=True),
        )
    return nn.Sequential(
        nn.Conv2d(in_ch, mid, kernel_size=1, bias=False),
        nn.BatchNorm2d(mid),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid, out, kernel_size=kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU(inplace=True),
    )


def make_extras(base: Base, last_size: int) -> tuple[nn.ModuleList, list[int]]:
    """Extra layers after the base's last tap (of size last_size) until the map is 1x1; their out channels."""
    extras, channels = nn.ModuleList(), []
    in_ch, n = base.out_channels[-1], last_size
    while (shape := extra_layer_shape(n)) is not None:
        mid, out = base.extra_channels[min(len(extras), len(base.extra_channels) - 1)]
        extras.append(extra_layer(in_ch, mid, out, *shape, batch_norm=base.extra_batch_norm))
        channels.append(out)
        in_ch, n = out, conv_output_size(n, *shape)
    xavier_init(extras)
    return extras, channels


class SSDFeatures(nn.Module):
    """Base taps followed by the extra layers: the list of feature maps the heads predict from."""

    def __init__(self, base: Base, extras: nn.ModuleList):
        super().__init__()
        self.base = base
        self.extras = extras

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = self.base(x)
        x = maps[-1]
        for layer in self.extras:
            x = layer(x)
            maps.append(x)
        return maps


SHAPE_PRESERVING = (
    nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
    nn.Dropout, torchvision.ops.StochasticDepth,
)


def shape_only(module: nn.Module) -> nn.Module:
    """A shadow copy of `module` for dry runs on the meta device: its parameters and buffers are meta tensors
    (no data copied, nothing computed), in eval mode, with the layers that cannot change shapes or FLOP counts
    (BatchNorm, activations, dropout) swapped for Identity since their meta kernels are slow; `module` itself
    is left untouched."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad) for p in module.parameters()}
    memo.update({id(b): torch.empty_like(b, device="meta") for b in module.buffers()})
    shadow = copy.deepcopy(module, memo).eval()
    for name, layer in list(shadow.named_modules()):
        if isinstance(layer, SHAPE_PRESERVING):
            parent, _, child = name.rpartition(".")
            setattr(shadow.get_submodule(parent), child, nn.Identity())
    return shadow


def dry_run_sizes(module: nn.Module, image_size: int) -> list[int]:
    """Side of every map `module` returns for a square image, from a dry run of its shape_only shadow."""
    with torch.no_grad():
        maps = shape_only(module)(torch.empty(1, 3, image_size, image_size, device="meta"))
    sizes = []
    for m in maps:
        if m.shape[-1] != m.shape[-2]:
            raise ConfigError(f"image_size={image_size}: feature map {tuple(m.shape)} is not square")
        sizes.append(int(m.shape[-1]))
    return sizes


def prediction_head(in_ch: int, out_ch: int, lite: bool) -> nn.Module:
    """3x3 conv predictor (paper 2.1); lite: depthwise 3x3 + BN + ReLU6 then 1x1 conv (SSDLite)."""
    if not lite:
        return nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)
    return nn.Sequential(
        nn.Conv2d(in_ch, in_ch, kernel_size=3, padding=1, groups=in_ch, bias=False),
        nn.BatchNorm2d(in_ch),
        nn.ReLU6(inplace=True),
        nn.Conv2d(in_ch, out_ch, kernel_size=1),
    )


def flatten_predictions(maps: list[Tensor], heads: nn.ModuleList, columns: int) -> Tensor:
    """[B, A*K, H, W] per map -> [B, sum(H*W*A), K] in (map, h, w, anchor) order (channels_last friendly)."""
    return torch.cat(
        [head(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1, columns) for head, x in zip(heads, maps)], dim=1
    )


class SSD(nn.Module):
    """Single Shot MultiBox Detector: forward(normalised images) -> (loc [B, P, 4], conf [B, P, C]).

    loc holds the offsets of paper eq. 2 (decoded with variances 0.1, 0.2 elsewhere), conf the class
    logits with class 0 = background. `priors` [P, 4] (cx, cy, w, h in [0, 1]) lines up with P.
    """

    priors: Tensor

    def __init__(self, features: SSDFeatures, channels: list[int], prior_spec: PriorSpec, num_classes: int, lite_heads: bool = False):
        super().__init__()
        self.features = features
        self.prior_spec = prior_spec
        self.num_classes = num_classes
        self.image_size = prior_spec.image_size
        anchors = prior_spec.boxes_per_cell()
        self.loc_heads = nn.ModuleList(prediction_head(c, a * 4, lite_heads) for c, a in zip(channels, anchors))
        self.conf_heads = nn.ModuleList(prediction_head(c, a * num_classes, lite_heads) for c, a in zip(channels, anchors))
        xavier_init(self.loc_heads)
        xavier_init(self.conf_heads)
        self.register_buffer("priors", default_boxes(prior_spec), persistent=False)
        self.input_mean = features.base.input_mean
        self.input_std = features.base.input_std

    def normalize(self, images: Tensor) -> Tensor:
        """0..255 images -> the input statistics this base network's ImageNet weights expect."""
        return normalize(images, self.input_mean, self.input_std)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        maps = self.features(images)
        loc = flatten_predictions(maps, self.loc_heads, 4)
        conf = flatten_predictions(maps, self.conf_heads, self.num_classes)
        return loc, conf


# build_ssd's keyword options and the model-section key each one sets
_SECTION_OPTIONS = {"lite_heads": "lite_heads", "prior_scales": "prior_scales", "width_mult": "width_mult",
                    "output_stride": "output_stride", "vgg_weights": "vgg_weights", "first_ratio": "prior_first_ratio",
                    "min_ratio": "prior_min_ratio", "max_ratio": "prior_max_ratio"}
_RAW_PRIOR_OPTIONS = ("steps", "min_sizes", "max_sizes", "aspect_ratios", "clip")


def build_ssd(model: "ModelConfig | str" = "vgg16", num_classes: int = 21, image_size: int | None = None,
              pretrained: bool | None = None, **options) -> SSD:
    """SSD from a model section (ssd_core.config.ModelConfig, the one place its keys are defined and
    checked) with `num_classes` classes including background.

    For scripts and tests the section can be given as keywords instead: build_ssd("vgg16", 21, 300,
    lite_heads=..., prior_scales=..., width_mult=..., output_stride=..., vgg_weights=..., first_ratio=...,
    min_ratio=..., max_ratio=...), validated the same way; plus the raw default-box overrides of
    priors.paper_prior_spec (steps, min_sizes, max_sizes, aspect_ratios, clip). For vgg16 at 300 px with 21
    classes this is the paper's SSD300 (26,285,486 parameters, 8732 default boxes); at 512 px SSD512.
    """
    from ssd_core.config import ModelConfig, validate_section

    if "backbone" in options:  # build_ssd(backbone="vgg16", ...): the keyword form's name for `model`
        model = options.pop("backbone")
    raw = {k: options.pop(k) for k in _RAW_PRIOR_OPTIONS if k in options}
    unknown = set(options) - set(_SECTION_OPTIONS)
    if unknown:
        raise ConfigError(f"build_ssd: unknown model option(s) {sorted(unknown)}")
    if isinstance(model, str):
        section = {"backbone": model, "image_size": 300 if image_size is None else image_size,
                   "pretrained": bool(pretrained), **{_SECTION_OPTIONS[k]: v for k, v in options.items()}}
        if not isinstance(section["image_size"], int):
            raise ConfigError(f"model.image_size={section['image_size']!r}: need an int >= 32")
        model = validate_section(ModelConfig, section, "model", "build_ssd")
    elif image_size is not None or pretrained is not None or options:
        raise ConfigError("build_ssd: give either a model section or keyword options, not both")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"model.num_classes={num_classes!r}: need an int >= 2 (background + at least one class)")
    base = build_base(model)
    extras, extra_channels = make_extras(base, dry_run_sizes(base, model.image_size)[-1])
    features = SSDFeatures(base, extras)
    maps = dry_run_sizes(features, model.image_size)
    return SSD(features, base.out_channels + extra_channels, model_prior_spec(model, maps, **raw), num_classes,
               model.lite_heads)


def feature_map_sizes(model: "ModelConfig") -> list[int]:
    """The sides of the maps the network of a model section produces (base taps, then the extra layers)."""
    with torch.device("meta"):  # shapes only: no weights initialised
        base = build_base(model)
    sizes = dry_run_sizes(base, model.image_size)
    n = sizes[-1]
    while (shape := extra_layer_shape(n)) is not None:
        n = conv_output_size(n, *shape)
        sizes.append(n)
    return sizes
