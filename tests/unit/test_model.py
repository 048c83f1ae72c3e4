"""SSD model: the paper's VGG16 SSD300, the other bases, size-adaptive extras, heads, pretrained weights."""
from __future__ import annotations

import copy
from dataclasses import replace
from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import nn

from ssd_core.backbones import IMAGENET_MEAN, IMAGENET_STD, L2Norm, imagenet_weights_path, reduce_fc
from ssd_core.errors import CheckpointError, ConfigError, UserError
from ssd_core.model import SSD, build_ssd, extra_layer_shape, flatten_predictions, normalize
from ssd_core.priors import default_boxes

torch.set_num_threads(1)
MAPS_300 = (38, 19, 10, 5, 3, 1)
TINY = dict(backbone="mobilenet_v2", width_mult=0.35)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def meta_forward(model: SSD, size: int, batch: int = 2):
    """Run the model on the meta device (shapes only) without touching it."""
    memo = {id(t): torch.empty_like(t, device="meta") for t in model.parameters()}
    memo.update({id(t): torch.empty_like(t, device="meta") for t in model.buffers()})
    shadow = copy.deepcopy(model, memo)
    with torch.no_grad():
        return shadow(torch.empty(batch, 3, size, size, device="meta"))


@pytest.fixture(scope="module")
def ssd300():
    return build_ssd("vgg16", num_classes=21, image_size=300)


def test_ssd300_vgg16_has_the_paper_parameter_count(ssd300):
    with torch.device("meta"):  # no init compute, no download
        reference = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21)
    assert n_params(ssd300) == 26_285_486 == n_params(reference)
    assert ssd300.priors.shape == (8732, 4) and ssd300.num_classes == 21 and ssd300.image_size == 300
    assert ssd300.prior_spec.feature_maps == MAPS_300


def test_vgg16_layers_are_the_papers(ssd300):
    conv4_3, fc7 = ssd300.features.base.stages
    pools = [m for m in conv4_3 if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3 and pools[2].ceil_mode  # pool3 in ceil mode -> 38x38
    pool5, fc6, fc7_conv = fc7[-5], fc7[-4], fc7[-2]
    assert (pool5.kernel_size, pool5.stride, pool5.padding) == (3, 1, 1)
    assert fc6.out_channels == 1024 and fc6.dilation == (6, 6) and fc6.padding == (6, 6) and fc6.kernel_size == (3, 3)
    assert fc7_conv.out_channels == 1024 and fc7_conv.kernel_size == (1, 1)
    l2norm = ssd300.features.base.tap_norms[0]
    assert isinstance(l2norm, L2Norm) and torch.equal(l2norm.weight.detach(), torch.full((512,), 20.0))
    x = torch.randn(2, 512, 3, 3)  # L2Norm: unit channel norm times the scale
    torch.testing.assert_close(l2norm(x).norm(dim=1), torch.full((2, 3, 3), 20.0))
    # new layers: Xavier-uniform weights, zero biases
    bound = (6 / (512 * 9 + 1024 * 9)) ** 0.5  # fan_in + fan_out of fc6
    assert 0.9 * bound < fc6.weight.abs().max() <= bound and fc6.bias.abs().sum() == 0
    assert [e[2].kernel_size for e in ssd300.features.extras] == [(3, 3)] * 4
    assert [e[2].stride for e in ssd300.features.extras] == [(2, 2), (2, 2), (1, 1), (1, 1)]


def test_ssd512_has_seven_maps_and_conv12_2():
    model = build_ssd("vgg16", num_classes=21, image_size=512)
    assert model.prior_spec.feature_maps == (64, 32, 16, 8, 4, 2, 1)
    assert model.priors.shape == (24564, 4)
    conv12_2 = model.features.extras[-1][2]
    assert conv12_2.kernel_size == (4, 4) and conv12_2.padding == (1, 1)
    loc, conf = meta_forward(model, 512)
    assert loc.shape == (2, 24564, 4) and conf.shape == (2, 24564, 21)


@pytest.mark.parametrize(
    "backbone,options",
    [("vgg16", {}), ("resnet50", {}), ("mobilenet_v2", {"width_mult": 0.5}), ("efficientnet_v2_s", {})],
)
def test_every_backbone_gives_six_paper_maps_at_300(backbone, options, request):
    if backbone == "vgg16":  # reuse the module's SSD300
        model = request.getfixturevalue("ssd300").eval()
    else:
        model = build_ssd(backbone, num_classes=4, image_size=300, **options).eval()
    classes = model.num_classes
    seen = []
    hook = model.features.register_forward_hook(lambda module, inputs, maps: seen.extend(maps))
    with torch.no_grad():
        loc, conf = model(torch.randn(1, 3, 300, 300))
    hook.remove()
    assert [tuple(m.shape[-2:]) for m in seen] == [(f, f) for f in MAPS_300]
    assert loc.shape == (1, 8732, 4) and conf.shape == (1, 8732, classes) and len(model.priors) == 8732
    assert torch.isfinite(loc).all() and torch.isfinite(conf).all()


@pytest.mark.parametrize(
    "size,maps", [(128, (16, 8, 4, 2, 1)), (160, (20, 10, 5, 3, 1)), (300, MAPS_300), (512, (64, 32, 16, 8, 4, 2, 1))]
)
def test_small_and_large_inputs_priors_match_head_outputs(size, maps):
    model = build_ssd(num_classes=3, image_size=size, **TINY)
    assert model.prior_spec.feature_maps == maps
    model.eval()
    with torch.no_grad():
        loc, conf = model(torch.randn(1, 3, size, size))
    assert loc.shape == (1, len(model.priors), 4) and conf.shape == (1, len(model.priors), 3)
    vgg = build_ssd("vgg16", num_classes=3, image_size=size) if size in (128, 160) else None
    if vgg is not None:
        assert vgg.prior_spec.feature_maps == maps
        assert meta_forward(vgg, size)[0].shape == (2, len(vgg.priors), 4)


def test_extra_layer_rule_drops_layers_below_1x1():
    assert [extra_layer_shape(n) for n in (19, 10, 5, 3)] == [(3, 2, 1), (3, 2, 1), (3, 1, 0), (3, 1, 0)]
    assert extra_layer_shape(4) == (3, 2, 1) and extra_layer_shape(2) == (4, 1, 1) and extra_layer_shape(1) is None
    model = build_ssd(num_classes=3, image_size=64, **TINY)  # 64 px: taps 8, 4; extras 2, 1
    assert model.prior_spec.feature_maps == (8, 4, 2, 1) and len(model.features.extras) == 2


def test_heads_order_predictions_like_torchvision():
    from torchvision.models.detection.ssd import SSDClassificationHead, SSDRegressionHead

    model = build_ssd(num_classes=5, image_size=160, **TINY)
    channels = [h.in_channels for h in model.loc_heads]
    anchors = model.prior_spec.boxes_per_cell()
    maps = [torch.randn(2, c, f, f) for c, f in zip(channels, model.prior_spec.feature_maps)]
    reg, cls = SSDRegressionHead(channels, anchors), SSDClassificationHead(channels, anchors, 5)
    reg.module_list.load_state_dict(model.loc_heads.state_dict())
    cls.module_list.load_state_dict(model.conf_heads.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(flatten_predictions(maps, model.loc_heads, 4), reg(maps))
        torch.testing.assert_close(flatten_predictions(maps, model.conf_heads, 5), cls(maps))


def test_predictions_line_up_with_default_boxes():
    """Feed maps whose value is the cell index; a head that copies it must match each prior's cell."""
    model = build_ssd(num_classes=3, image_size=160, **TINY)
    spec = model.prior_spec
    maps = []
    for k, (head, f) in enumerate(zip(model.loc_heads, spec.feature_maps)):
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
            head.weight[:, 0, 1, 1] = 1.0  # every output channel copies channel 0 of the cell
        i, j = torch.meshgrid(torch.arange(f), torch.arange(f), indexing="ij")
        x = torch.zeros(1, head.in_channels, f, f)
        x[0, 0] = k * 10_000 + i * 100 + j
        maps.append(x)
    with torch.no_grad():
        code = flatten_predictions(maps, model.loc_heads, 4)[0, :, 0].round().long()
    priors = default_boxes(replace(spec, clip=False))
    k = torch.cat([torch.full((f * f * a,), n) for n, (f, a) in enumerate(zip(spec.feature_maps, spec.boxes_per_cell()))])
    steps = torch.tensor(spec.steps, dtype=torch.float64)[k]
    i = (priors[:, 1].double() * spec.image_size / steps - 0.5).round().long()
    j = (priors[:, 0].double() * spec.image_size / steps - 0.5).round().long()
    assert torch.equal(code, k * 10_000 + i * 100 + j)


def test_channels_last_input_gives_the_same_output():
    model = build_ssd(num_classes=3, image_size=128, **TINY).eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        loc, conf = model(x)
        loc_cl, conf_cl = model(x.contiguous(memory_format=torch.channels_last))
        model_cl = model.to(memory_format=torch.channels_last)
        loc_both, _ = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(loc_cl, loc, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(conf_cl, conf, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loc_both, loc, rtol=1e-4, atol=1e-5)


def test_training_step_backpropagates_to_every_parameter():
    model = build_ssd(num_classes=3, image_size=128, lite_heads=True, **TINY)
    loc, conf = model(torch.randn(2, 3, 128, 128))
    (loc.square().mean() + conf.logsumexp(-1).mean()).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_lite_heads_are_depthwise_separable():
    full = build_ssd(num_classes=21, image_size=160, **TINY)
    lite = build_ssd(num_classes=21, image_size=160, lite_heads=True, **TINY)
    dw = lite.conf_heads[0][0]
    assert dw.groups == dw.in_channels == dw.out_channels and dw.kernel_size == (3, 3)
    assert lite.conf_heads[0][-1].kernel_size == (1, 1)
    heads = lambda m: n_params(m.loc_heads) + n_params(m.conf_heads)  # noqa: E731
    assert heads(lite) < heads(full) / 5
    assert meta_forward(lite.eval(), 160)[1].shape == (2, 2390, 21)


def test_normalize():
    images = torch.tensor([0, 128, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = normalize(images)
    expected = (torch.tensor([0, 128, 255]) / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert out.dtype == torch.float32 and out.shape == (2, 3, 2, 2)
    torch.testing.assert_close(out[0, :, 0, 0], expected)
    vgg_like = normalize(images.float(), mean=(123.0, 117.0, 104.0), std=(1.0, 1.0, 1.0))
    torch.testing.assert_close(vgg_like[1, :, 1, 1], torch.tensor([-123.0, 11.0, 151.0]))


def test_model_normalize_uses_the_base_statistics(ssd300):
    images = torch.full((1, 3, 2, 2), 200, dtype=torch.uint8)
    torch.testing.assert_close(ssd300.normalize(images)[0, :, 0, 0], torch.tensor([77.0, 83.0, 96.0]))
    tiny = build_ssd(num_classes=3, image_size=64, **TINY)
    torch.testing.assert_close(tiny.normalize(images), normalize(images))


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="resnet18"):
        build_ssd("resnet18")
    with pytest.raises(ConfigError, match="lite_head"):
        build_ssd(num_classes=3, image_size=64, lite_head=True, **TINY)
    with pytest.raises(ConfigError, match="num_classes"):
        build_ssd(num_classes=1, image_size=64, **TINY)
    with pytest.raises(ConfigError, match="width_mult"):
        build_ssd(num_classes=3, image_size=64, pretrained=True, **TINY)
    with pytest.raises(ConfigError, match="width_mult"):
        build_ssd("resnet50", width_mult=0.5)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty $TORCH_HOME and a network that refuses every download."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def no_network(*args, **kwargs):
        raise URLError("network unreachable (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "hub" / "checkpoints"


def test_pretrained_offline_names_the_expected_file(offline_hub):
    with pytest.raises(UserError) as err:
        build_ssd("mobilenet_v2", num_classes=3, image_size=64, pretrained=True)
    message = str(err.value)
    assert str(offline_hub / "mobilenet_v2-7ebf99e0.pth") in message
    assert "TORCH_HOME" in message and "https://download.pytorch.org/models/mobilenet_v2-7ebf99e0.pth" in message


def test_pretrained_vgg16_offline_names_the_weights_file(offline_hub, monkeypatch):
    def refuse(*args, **kwargs):
        raise URLError("no route to host (test)")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    with pytest.raises(CheckpointError, match="vgg16-397923af.pth") as err:  # IMAGENET1K_V1: the default
        build_ssd("vgg16", pretrained=True)
    assert "TORCH_HOME" in str(err.value) and str(offline_hub) in str(err.value)
    with pytest.raises(CheckpointError, match="vgg16_features-amdegroot-88682ab5.pth"):
        build_ssd("vgg16", pretrained=True, vgg_weights="features")
    with pytest.raises(ConfigError, match="vgg_weights"):
        build_ssd("vgg16", pretrained=True, vgg_weights="fc7")


def test_reduce_fc_subsamples_filters_and_taps_by_hand():
    """A fabricated small classifier (8 fc6 outputs over 2 channels x 7 x 7, 8 x 8 fc7): the conversion's
    indices, shapes and biases against the rule written out element by element."""
    g = torch.Generator().manual_seed(0)
    fc6_w, fc6_b = torch.randn(8, 2 * 49, generator=g), torch.randn(8, generator=g)
    fc7_w, fc7_b = torch.randn(8, 8, generator=g), torch.randn(8, generator=g)
    out = reduce_fc(fc6_w, fc6_b, fc7_w, fc7_b, channels=2)
    assert out["1.weight"].shape == (2, 2, 3, 3) and out["3.weight"].shape == (2, 2, 1, 1)
    for k in range(2):
        for c in range(2):
            for a in range(3):
                for b in range(3):
                    assert out["1.weight"][k, c, a, b] == fc6_w[4 * k, c * 49 + 7 * (3 * a) + 3 * b]
        assert out["1.bias"][k] == fc6_b[4 * k] and out["3.bias"][k] == fc7_b[4 * k]
        for j in range(2):
            assert out["3.weight"][k, j, 0, 0] == fc7_w[4 * k, 4 * j]
    with pytest.raises(ValueError, match="fc6 weight"):
        reduce_fc(torch.zeros(8, 50), fc6_b, fc7_w, fc7_b, channels=2)


def test_pretrained_vgg16_default_is_imagenet_v1_with_reduced_fc(monkeypatch):
    """vgg16 + pretrained loads IMAGENET1K_V1: conv weights copied unchanged, fc6/fc7 reduced from the
    classifier, and the model normalises with the ImageNet statistics that checkpoint was trained with."""
    from ssd_core import backbones

    g = torch.Generator().manual_seed(1)
    with torch.device("meta"):
        names = torchvision.models.vgg16().state_dict()
    state = {k: torch.randn(v.shape, generator=g) * 0.01 for k, v in names.items()}
    asked = []

    def fake_load(weights):
        asked.append(weights)
        return state

    monkeypatch.setattr(backbones, "load_imagenet_weights", fake_load)
    model = build_ssd("vgg16", num_classes=3, image_size=300, pretrained=True)
    assert asked == [torchvision.models.VGG16_Weights.IMAGENET1K_V1]
    base = model.features.base
    conv1_1, conv4_3 = base.stages[0][0], base.stages[0][21]
    assert torch.equal(conv1_1.weight, state["features.0.weight"]) and torch.equal(conv4_3.bias, state["features.21.bias"])
    conv5_3 = base.stages[1][5]
    assert torch.equal(conv5_3.weight, state["features.28.weight"])
    fc6, fc7 = base.stages[1][8], base.stages[1][10]
    assert fc6.dilation == (6, 6) and fc7.kernel_size == (1, 1)
    ref = reduce_fc(state["classifier.0.weight"], state["classifier.0.bias"],
                    state["classifier.3.weight"], state["classifier.3.bias"])
    assert torch.equal(fc6.weight, ref["1.weight"]) and torch.equal(fc7.bias, ref["3.bias"])
    assert torch.equal(fc6.weight[3, 100, 2, 1], state["classifier.0.weight"][12, 100 * 49 + 7 * 6 + 3])
    assert base.input_mean == IMAGENET_MEAN and base.input_std == IMAGENET_STD
    # the conv-only option keeps fc6/fc7 random and the Caffe-style input of that checkpoint
    feats = build_ssd("vgg16", num_classes=3, image_size=300, pretrained=True, vgg_weights="features")
    assert asked[-1] == torchvision.models.VGG16_Weights.IMAGENET1K_FEATURES
    assert not torch.equal(feats.features.base.stages[1][8].weight, ref["1.weight"])
    assert feats.features.base.input_mean == (123.0, 117.0, 104.0)


def test_pretrained_loads_a_file_placed_in_the_hub_cache(offline_hub):
    weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V2
    path = imagenet_weights_path(weights)
    assert path == offline_hub / "mobilenet_v2-7ebf99e0.pth"
    net = torchvision.models.mobilenet_v2()
    with torch.no_grad():
        net.features[0][0].weight.fill_(0.125)
        net.features[18][1].running_mean.fill_(3.0)
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)
    model = build_ssd("mobilenet_v2", num_classes=3, image_size=64, pretrained=True)
    stem, last = model.features.base.stages[0][0][0], model.features.base.stages[1][-1][1]
    assert torch.equal(stem.weight, torch.full_like(stem.weight, 0.125))
    assert torch.equal(last.running_mean, torch.full_like(last.running_mean, 3.0))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        build_ssd("mobilenet_v2", num_classes=3, image_size=64, pretrained=True)


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "efficientnet_v2_s"])
def test_output_stride_16_keeps_the_native_strides(backbone):
    """SSDLite layout: the first map at stride 16 (19x19 at 300 px) instead of the paper's 38x38."""
    kwargs = {"width_mult": 0.35} if backbone == "mobilenet_v2" else {}
    paper = build_ssd(backbone, num_classes=4, image_size=300, lite_heads=True, **kwargs)
    lite = build_ssd(backbone, num_classes=4, image_size=300, lite_heads=True, output_stride=16, **kwargs)
    assert paper.prior_spec.feature_maps[:2] == (38, 19)
    assert lite.prior_spec.feature_maps[:2] == (19, 10)
    with torch.no_grad():
        loc, conf = lite.eval()(torch.zeros(1, 3, 300, 300))
    assert loc.shape == (1, lite.priors.shape[0], 4) and conf.shape == (1, lite.priors.shape[0], 4)


def test_output_stride_is_checked():
    with pytest.raises(ConfigError, match="output_stride"):
        build_ssd("vgg16", num_classes=4, image_size=300, output_stride=16)
    with pytest.raises(ConfigError, match="output_stride"):
        build_ssd("mobilenet_v2", num_classes=4, image_size=300, output_stride=32)


def test_tiny_demo_backbone_maps_width_and_no_weights():
    """The demo's plain conv base: maps 12, 6, 3, 1 at 96 px; width_mult scales its channels; it has no
    ImageNet weights, and says so."""
    model = build_ssd("tiny", num_classes=5, image_size=96, width_mult=1.5).eval()
    assert model.prior_spec.feature_maps == (12, 6, 3, 1)
    assert model.features.base.out_channels == [96, 192]
    with torch.no_grad():
        loc, conf = model(model.normalize(torch.zeros(2, 3, 96, 96, dtype=torch.uint8)))
    assert loc.shape == (2, len(model.priors), 4) and conf.shape == (2, len(model.priors), 5)
    narrow = build_ssd("tiny", num_classes=5, image_size=96)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in model.parameters()) < 2_000_000
    with pytest.raises(ConfigError, match="no pretrained weights"):
        build_ssd("tiny", num_classes=5, image_size=96, pretrained=True)
