"""Base networks for SSD, built from torchvision.models: vgg16 | resnet50 | mobilenet_v2 | efficientnet_v2_s
(and `tiny`, a small plain conv net for the CPU demo and tests, not a paper backbone).

A `Base` runs its stages in sequence and returns one tap per stage (the feature maps the heads see
before the extra layers). At 300 px every base yields its first tap at 38x38 (output stride 8) and the
extra layers (model.py) continue from the last tap down to 1x1:

    vgg16     the paper (section 3, Fig. 2): conv4_3 (512 ch, pool3 in ceil mode -> 38x38, L2Norm with a
              learnable per-channel scale initialised to 20, ParseNet) and fc7 (1024 ch, 19x19): pool5
              3x3 stride 1 pad 1, fc6 = 3x3 conv dilation 6 (1024 ch), fc7 = 1x1 conv. Pretrained, fc6/fc7
              are the paper's "reduced fc" (`reduce_fc`): VGG16's ImageNet classifier subsampled, as every
              port that reaches ~77 mAP does; from scratch (or vgg_weights "features") they are Xavier init.
    resnet50  NVIDIA's SSD300 v1.1: conv1 ... layer3, layer3's stride set to 1 -> one tap, 1024 ch, 38x38.
    mobilenet_v2, efficientnet_v2_s
              taps at the end of the nominal stride-16 stage (MobileNetV2: the expansion layer of block 14
              as in SSDLite; EfficientNetV2-S: stage 5, 160 ch) and of the stride-32 stage (last 1x1 conv,
              1280 ch). As for ResNet50 the first block of the stride-16 stage gets stride 1, so these
              taps are 38x38 and 19x19 at 300 px (output stride 8 and 16).

`input_mean` / `input_std` (0..255 units) are what the ImageNet weights expect: torchvision's ImageNet
statistics, except vgg16 from scratch or with IMAGENET1K_FEATURES weights (ssd.pytorch's), which take
Caffe-style 0..255 input minus the mean (123, 117, 104).

VGG16 weights (`vgg_weights`, used when pretrained):
    "reduced_fc"  (default) torchvision's VGG16_Weights.IMAGENET1K_V1: conv1_1..conv5_3 as trained, and
                  fc6/fc7 converted from the classifier by `reduce_fc` (paper sec. 3: "we convert fc6 and
                  fc7 to convolutional layers, subsample parameters from fc6 and fc7"); ImageNet input
                  statistics, as that checkpoint was trained with.
    "features"    VGG16_Weights.IMAGENET1K_FEATURES (conv layers only, Caffe-style input); fc6/fc7 random.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from ssd_core.config import BACKBONES
from ssd_core.errors import CheckpointError

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
CAFFE_VGG_MEAN = (123.0, 117.0, 104.0)


class L2Norm(nn.Module):
    """L2-normalise over channels, then rescale by a learnable per-channel weight (ParseNet; paper 3.1)."""

    def __init__(self, channels: int, scale: float = 20.0):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1) * self.weight.view(1, -1, 1, 1)


class Base(nn.Module):
    """Stages run in sequence; the (optionally normalised) output of every stage is a tap.

    Also carries the recipe of the extra layers that follow it (model.py): `extra_channels` as
    (middle, out) channel pairs, the last pair repeated as long as needed, and `extra_batch_norm`.
    """

    def __init__(
        self,
        stages: list[nn.Module],
        out_channels: list[int],
        extra_channels: tuple[tuple[int, int], ...],
        extra_batch_norm: bool,
        input_mean=IMAGENET_MEAN,
        input_std=IMAGENET_STD,
        tap_norms: list[nn.Module] | None = None,
    ):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.tap_norms = nn.ModuleList(tap_norms or [nn.Identity() for _ in stages])
        self.out_channels = list(out_channels)
        self.extra_channels = tuple(extra_channels)
        self.extra_batch_norm = extra_batch_norm
        self.input_mean = tuple(float(v) for v in input_mean)
        self.input_std = tuple(float(v) for v in input_std)

    def forward(self, x: Tensor) -> list[Tensor]:
        taps = []
        for stage, norm in zip(self.stages, self.tap_norms):
            x = stage(x)
            taps.append(norm(x))
        return taps


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for the new conv layers (as ssd.pytorch and torchvision)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def unstride(block: nn.Module) -> None:
    """Set every stride-2 conv of `block` to stride 1 (NVIDIA SSD300 v1.1 does this to ResNet50 layer3)."""
    for m in block.modules():
        if isinstance(m, nn.Conv2d) and m.stride == (2, 2):
            m.stride = (1, 1)


def imagenet_weights_path(weights) -> Path:
    """Where torchvision's weights API looks for a weights file: $TORCH_HOME/hub/checkpoints/<file name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def load_imagenet_weights(weights) -> dict[str, Tensor]:
    """The state dict of a torchvision weights enum, from the hub cache or (with network) a download.

    Raises CheckpointError (a UserError) naming the expected file when it cannot be had offline or
    cannot be read.
    """
    path = imagenet_weights_path(weights)
    existed = path.is_file()
    try:
        return torch.hub.load_state_dict_from_url(
            weights.url, progress=False, check_hash=True, map_location="cpu", weights_only=True
        )
    except (URLError, OSError, TimeoutError) as err:
        if existed:
            raise CheckpointError(f"{path}: cannot read the ImageNet weights for {weights} ({err})") from err
        raise CheckpointError(
            f"{path}: ImageNet weights for {weights} are not available offline ({err}). Download "
            f"{weights.url} on a machine with network access and copy it to {path} "
            f"(the directory is $TORCH_HOME/hub/checkpoints; set TORCH_HOME to use another cache), "
            f"or build the model with pretrained=False."
        ) from err
    except Exception as err:  # corrupt or truncated file
        raise CheckpointError(f"{path}: cannot read the ImageNet weights for {weights} ({err})") from err


def load_into(module: nn.Module, state: dict[str, Tensor], weights) -> None:
    """Strict load_state_dict that names the weights file when the keys or shapes do not match."""
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(
            f"{imagenet_weights_path(weights)}: does not match torchvision's {type(module).__name__} ({err})"
        ) from err


def reduce_fc(fc6_weight: Tensor, fc6_bias: Tensor, fc7_weight: Tensor, fc7_bias: Tensor,
              channels: int = 512, grid: int = 7, out_step: int = 4, tap_step: int = 3) -> dict[str, Tensor]:
    """VGG16's fully connected fc6/fc7 -> the paper's convolutional fc6 (3x3, atrous) and fc7 (1x1) by
    subsampling ("reduced fc", as the authors' VGG_ILSVRC_16_layers_fc_reduced):

        fc6 [4096, 512*7*7] -> [1024, 512, 3, 3]: every 4th output filter, every 3rd tap of the 7x7 grid
                               (rows and columns 0, 3, 6): conv[k, c, a, b] = fc6[4k, c*49 + 21a + 3b]
        fc7 [4096, 4096]    -> [1024, 1024, 1, 1]: every 4th row and every 4th column
        biases              -> every 4th entry

    Returns the state of `nn.Sequential(pool5, fc6, relu, fc7, relu)` (keys 1.* and 3.*)."""
    out6 = fc6_weight.shape[0]
    if fc6_weight.shape[1] != channels * grid * grid:
        raise ValueError(f"fc6 weight {tuple(fc6_weight.shape)}: expected [N, {channels}*{grid}*{grid}]")
    w6 = fc6_weight.reshape(out6, channels, grid, grid)[::out_step, :, ::tap_step, ::tap_step]
    w7 = fc7_weight[::out_step, ::out_step]
    return {"1.weight": w6.contiguous(), "1.bias": fc6_bias[::out_step].contiguous(),
            "3.weight": w7.reshape(*w7.shape, 1, 1).contiguous(), "3.bias": fc7_bias[::out_step].contiguous()}


def vgg16_base(pretrained: bool = False, vgg_weights: str = "reduced_fc") -> Base:
    """The paper's VGG16 (Fig. 2): conv1_1 ... conv4_3 (+ L2Norm), pool5 3x3/1, fc6 atrous, fc7."""
    with torch.device("meta"):  # skip building (and initialising) VGG's 120M-parameter classifier
        features = torchvision.models.vgg16().features
    features = features.to_empty(device="cpu")
    for m in features.modules():  # torchvision's VGG init
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    fc6_fc7 = nn.Sequential(
        nn.MaxPool2d(kernel_size=3, stride=1, padding=1),  # pool5
        nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6),  # fc6, atrous
        nn.ReLU(inplace=True),
        nn.Conv2d(1024, 1024, kernel_size=1),  # fc7
        nn.ReLU(inplace=True),
    )
    xavier_init(fc6_fc7)
    mean, std = CAFFE_VGG_MEAN, (1.0, 1.0, 1.0)
    if pretrained:
        reduced = vgg_weights == "reduced_fc"
        weights = (torchvision.models.VGG16_Weights.IMAGENET1K_V1 if reduced
                   else torchvision.models.VGG16_Weights.IMAGENET1K_FEATURES)
        state = load_imagenet_weights(weights)
        load_into(features, {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}, weights)
        if reduced:
            try:
                fc = reduce_fc(state["classifier.0.weight"], state["classifier.0.bias"],
                               state["classifier.3.weight"], state["classifier.3.bias"])
            except (KeyError, ValueError) as err:
                raise CheckpointError(f"{imagenet_weights_path(weights)}: no VGG16 classifier to reduce ({err})") from err
            load_into(fc6_fc7, fc, weights)
            mean, std = IMAGENET_MEAN, IMAGENET_STD
    pools = [i for i, layer in enumerate(features) if isinstance(layer, nn.MaxPool2d)]
    features[pools[2]].ceil_mode = True  # pool3: 75 -> 38 at 300 px
    return Base(
        stages=[features[: pools[3]], nn.Sequential(*features[pools[3] : pools[4]], *fc6_fc7)],
        out_channels=[512, 1024],
        tap_norms=[L2Norm(512, 20.0), nn.Identity()],
        extra_channels=((256, 512), (128, 256)),
        extra_batch_norm=False,
        input_mean=mean,
        input_std=std,
    )


def resnet50_base(pretrained: bool = False) -> Base:
    """NVIDIA SSD300 v1.1: ResNet50 up to layer3, layer3 with stride 1 (1024 ch at 38x38 for 300 px)."""
    net = torchvision.models.resnet50()
    if pretrained:
        weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V2
        load_into(net, load_imagenet_weights(weights), weights)
    unstride(net.layer3[0])
    body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3)
    return Base(
        stages=[body],
        out_channels=[1024],
        extra_channels=((256, 512), (256, 512), (128, 256)),
        extra_batch_norm=True,
    )


def mobilenet_v2_base(pretrained: bool = False, width_mult: float = 1.0, output_stride: int = 8) -> Base:
    """MobileNetV2 taps: expansion of block 14 (SSDLite's C4) and the last 1x1 conv; block 7 unstrided
    for output_stride 8 (the paper's 38x38 first map), left as is for 16 (SSDLite's 19x19, ~3x cheaper)."""
    net = torchvision.models.mobilenet_v2(width_mult=width_mult)
    if pretrained:
        weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V2
        load_into(net, load_imagenet_weights(weights), weights)
    f = net.features
    if output_stride == 8:
        unstride(f[7])  # first block of the stride-16 stage
    expand = f[14].conv[0]  # block 14 is stride 2 without a residual, so it can be split
    return Base(
        stages=[nn.Sequential(*f[:14], expand), nn.Sequential(*f[14].conv[1:], *f[15:])],
        out_channels=[expand.out_channels, f[-1].out_channels],
        extra_channels=((256, 512), (128, 256), (128, 256), (64, 128)),
        extra_batch_norm=True,
    )


def efficientnet_v2_s_base(pretrained: bool = False, output_stride: int = 8) -> Base:
    """EfficientNetV2-S taps: end of stage 5 (160 ch) and the last 1x1 conv (1280 ch); stage 4 unstrided
    for output_stride 8, left as is for 16."""
    net = torchvision.models.efficientnet_v2_s()
    if pretrained:
        weights = torchvision.models.EfficientNet_V2_S_Weights.IMAGENET1K_V1
        load_into(net, load_imagenet_weights(weights), weights)
    f = net.features
    if output_stride == 8:
        unstride(f[4][0])  # first block of the stride-16 stage
    return Base(
        stages=[f[:6], f[6:]],
        out_channels=[f[5][-1].out_channels, f[-1].out_channels],
        extra_channels=((256, 512), (128, 256), (128, 256), (64, 128)),
        extra_batch_norm=True,
    )


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def tiny_base(pretrained: bool = False, width_mult: float = 1.0) -> Base:
    """NOT a paper backbone: a small plain conv net (3x3 conv + BatchNorm + ReLU, 7 layers, ~0.4M
    parameters at width 1) for the CPU demo and tests, where a detector must learn from scratch in
    seconds. Taps at stride 8 (64 ch x width) and 16 (128 ch x width); no pretrained weights."""
    c = lambda n: max(8, int(round(n * width_mult)))  # noqa: E731
    stride8 = nn.Sequential(_conv_bn(3, c(16), 2), _conv_bn(c(16), c(32), 2), _conv_bn(c(32), c(32), 1),
                            _conv_bn(c(32), c(64), 2), _conv_bn(c(64), c(64), 1))
    stride16 = nn.Sequential(_conv_bn(c(64), c(128), 2), _conv_bn(c(128), c(128), 1))
    return Base(stages=[stride8, stride16], out_channels=[c(64), c(128)],
                extra_channels=((c(64), c(128)), (c(64), c(128))), extra_batch_norm=True)


# The builders, keyed by ssd_core.config.BACKBONES (which says what each base accepts): model section -> Base.
BUILDERS = {
    "vgg16": lambda m: vgg16_base(m.pretrained, m.vgg_weights),
    "resnet50": lambda m: resnet50_base(m.pretrained),
    "mobilenet_v2": lambda m: mobilenet_v2_base(m.pretrained, m.width_mult, m.output_stride),
    "efficientnet_v2_s": lambda m: efficientnet_v2_s_base(m.pretrained, m.output_stride),
    "tiny": lambda m: tiny_base(m.pretrained, m.width_mult),
}
assert set(BUILDERS) == set(BACKBONES), "ssd_core.config.BACKBONES and BUILDERS name the same bases"


def build_base(m) -> Base:
    """The base network of a validated model section (ssd_core.config.ModelConfig)."""
    return BUILDERS[m.backbone](m)
