"""engine.models: the shared interface, parameter counts, MultiHead, torchvision's names and
counts for the ImageNet ResNets, and starting weights from a file (--pretrained)."""
import random
import re

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from engine.models import MODELS, MultiHead, build_model, load_pretrained
from engine.models.base import recalibrate_batchnorm
from test_safe_loading import Payload

IMAGENET_RESNETS = ["resnet18", "resnet50"]
RESNETS = ["preact_resnet18", "preact_resnet34", *IMAGENET_RESNETS]
IMAGE_MODELS = [name for name in MODELS if name != "mlp"]


def shapes(name):
    """(in_channels, image_size, num_classes) to test `name` at: the ImageNet ResNets at real
    resolution and at 64 and 8 px (their stem shrinks any size); 8x8 otherwise only for the small CNNs."""
    if name in IMAGENET_RESNETS:
        return [(3, 224, 10), (1, 64, 10), (3, 64, 100), (1, 8, 10)]
    return [(3, 32, 10), (1, 28, 10), (3, 32, 100)] + ([(1, 8, 10)] if name.startswith("small_cnn") else [])


# (name, in_channels, image_size, num_classes); the MLP takes feature vectors [B, in_channels]
# (64: the digits' pixels; 3: fewer features than classes).
CASES = [(name, *shape) for name in IMAGE_MODELS for shape in shapes(name)] + [("mlp", 64, 1, 10), ("mlp", 3, 1, 100)]


def make(name, in_channels, image_size, num_classes):
    """A model and a small input batch (batch 2 keeps the ResNets fast on CPU)."""
    torch.manual_seed(0)
    model = build_model(name, num_classes, in_channels=in_channels, image_size=image_size)
    if name == "mlp":
        return model, torch.randn(4, in_channels)
    x = torch.randn(2 if name in RESNETS else 4, in_channels, image_size, image_size)
    return model, x


@pytest.mark.parametrize("name,in_channels,image_size,num_classes", CASES)
def test_interface(name, in_channels, image_size, num_classes):
    model, x = make(name, in_channels, image_size, num_classes)
    model.eval()
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        maps = model.forward_stages(x)
    assert logits.shape == (x.shape[0], num_classes) and model.num_classes == num_classes
    assert isinstance(model.fc, torch.nn.Linear) and features.shape == (x.shape[0], model.feature_dim)
    torch.testing.assert_close(model.fc(features), logits)
    assert len(maps) == len(model.stage_channels) == (4 if name in (*RESNETS, "small_cnn_dense") else 3)
    assert [m.shape[1] for m in maps] == model.stage_channels
    assert model.feature_dim == model.stage_channels[-1]
    torch.testing.assert_close(maps[-1] if maps[-1].ndim == 2 else maps[-1].mean((2, 3)), features)


@pytest.mark.parametrize("name,in_channels,image_size,num_classes", CASES)
def test_gradients_reach_every_parameter(name, in_channels, image_size, num_classes):
    model, x = make(name, in_channels, image_size, num_classes)
    target = torch.arange(x.shape[0]) % num_classes
    torch.nn.functional.cross_entropy(model(x), target).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name


@pytest.mark.parametrize("name,in_channels,image_size,num_classes", [case for case in CASES if case[0] != "mlp"])
def test_channels_last_matches_contiguous(name, in_channels, image_size, num_classes):
    model, x = make(name, in_channels, image_size, num_classes)
    model.eval()
    with torch.no_grad():
        expected = model(x)
        got = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["small_cnn", "small_cnn_dense"])
@pytest.mark.parametrize("height,width", [(20, 30), (28, 2), (2, 28), (28, 28)])
def test_small_cnns_take_images_of_any_height_and_width(name, height, width):
    """(height, width) sizes the dense stage, and each side is pooled only while it is long
    enough: a 2-pixel-wide side is never shrunk to nothing."""
    model = build_model(name, 10, in_channels=1, image_size=(height, width)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, height, width)).shape == (2, 10)
    square = build_model(name, 10, in_channels=1, image_size=28)
    assert [p.shape for p in square.parameters()] == [p.shape for p in build_model(name, 10, 1, (28, 28)).parameters()]


@pytest.mark.parametrize(
    "name,low,high",
    [("preact_resnet18", 11.0e6, 11.4e6), ("preact_resnet34", 21.0e6, 21.5e6), ("small_cnn", 0, 0.5e6),
     ("small_cnn_dense", 1.0e6, 1.2e6), ("mlp", 0, 0.1e6)],
)
def test_parameter_count(name, low, high):
    count = sum(p.numel() for p in build_model(name, 10).parameters())
    assert low <= count < high


@pytest.mark.parametrize("name", MODELS)
def test_multihead(name):
    model, x = make(name, *((64, 1) if name == "mlp" else (3, 32)), 10)
    wrapped = MultiHead(model, extra_heads={"negative": 10, "aux": 5}, with_stage_heads=True).eval()
    with torch.no_grad():
        out = wrapped(x)
        expected = model(x)
    num_stages = len(model.stage_channels)
    stage_keys = [f"stage{i}" for i in range(num_stages - 1)]
    feature_keys = [f"{key}_features" for key in stage_keys]
    assert set(out) == {"main", "negative", "aux", "features", *stage_keys, *feature_keys}
    torch.testing.assert_close(out["main"], expected)
    torch.testing.assert_close(out["features"], model.forward_features(x))
    assert out["negative"].shape == (x.shape[0], 10) and out["aux"].shape == (x.shape[0], 5)
    assert all(out[key].shape == (x.shape[0], 10) for key in stage_keys)
    assert all(out[key].shape == (x.shape[0], model.feature_dim) for key in feature_keys)


def test_multihead_builds_its_heads_where_the_wrapped_model_is():
    """The trainer moves the network to its device before a method wraps it: BLDR's negative
    and stage heads were left on the CPU, beside a trunk on the GPU."""
    model = build_model("small_cnn", 10, in_channels=3, image_size=32).to("meta", torch.float64)
    wrapped = MultiHead(model, extra_heads={"negative": 10}, with_stage_heads=True)
    assert {(p.device.type, p.dtype) for p in wrapped.parameters()} == {("meta", torch.float64)}


def test_multihead_without_stage_heads_and_reserved_names():
    model, x = make("small_cnn", 1, 28, 10)
    assert set(MultiHead(model, extra_heads={"negative": 10})(x)) == {"main", "negative"}
    for reserved in ("main", "features", "stage0", "stage1_features"):
        with pytest.raises(ValueError, match="reserved"):
            MultiHead(model, extra_heads={reserved: 10})


def test_unknown_model_name():
    with pytest.raises(ValueError, match="mlp.*preact_resnet18.*resnet50.*small_cnn"):
        build_model("resnet9000", 10)


# Some of torchvision's resnet18 state-dict keys: the names its ImageNet weights load under.
TORCHVISION_RESNET18_KEYS = [
    "conv1.weight", "bn1.weight", "bn1.running_mean", "bn1.num_batches_tracked", "layer1.0.conv1.weight",
    "layer1.1.bn2.running_var", "layer2.0.downsample.0.weight", "layer2.0.downsample.1.bias",
    "layer3.1.conv2.weight", "layer4.0.downsample.1.running_mean", "layer4.1.bn2.weight", "fc.weight", "fc.bias",
]


def test_imagenet_resnets_carry_torchvision_names():
    resnet18, resnet50 = build_model("resnet18", 1000), build_model("resnet50", 1000)
    keys = list(resnet18.state_dict())
    assert set(TORCHVISION_RESNET18_KEYS) <= set(keys) and keys[0] == "conv1.weight" and keys[-1] == "fc.bias"
    assert not any(key.startswith("layer1.0.downsample") for key in keys), "layer1 keeps width and resolution"
    # torchvision: 62 / 161 parameter tensors, and 3 BatchNorm buffers per BatchNorm (20 / 53)
    assert (len(list(resnet18.parameters())), len(keys)) == (62, 122)
    assert (len(list(resnet50.parameters())), len(resnet50.state_dict())) == (161, 320)
    sizes = {key: list(value.shape) for key, value in resnet50.state_dict().items()}
    assert sizes["layer1.0.downsample.0.weight"] == [256, 64, 1, 1] and sizes["fc.weight"] == [1000, 2048]
    assert sizes["layer1.0.conv3.weight"] == [256, 64, 1, 1] and sizes["layer4.2.bn3.running_var"] == [2048]
    first = resnet50.layer2[0]  # v1.5: the stride on the 3x3 conv
    assert (first.conv1.stride, first.conv2.stride, first.downsample[0].stride) == ((1, 1), (2, 2), (2, 2))


@pytest.mark.parametrize("name,count", [("resnet18", 11_689_512), ("resnet50", 25_557_032)])
def test_imagenet_resnets_have_torchvision_parameter_counts(name, count):
    assert sum(p.numel() for p in build_model(name, 1000).parameters()) == count


def resnet18_state(num_classes, in_channels=3, seed=0):
    """A resnet18 state dict with every tensor, BatchNorm statistics included, set apart from a
    new network's."""
    torch.manual_seed(seed)
    state = build_model("resnet18", num_classes, in_channels=in_channels).state_dict()
    with torch.no_grad():
        for value in state.values():
            value.copy_(torch.randint(1, 100, value.shape))
    return state


@pytest.mark.parametrize("form,source_classes", [("torch", 1000), ("safetensors", 5), ("nested", 10),
                                                 ("legacy", 5), ("SAFETENSORS", 10), ("headless", 10)])
def test_pretrained_weights_load_but_a_classifier_of_another_size(tmp_path, form, source_classes):
    """... or none: a file without a classifier ("headless") starts the network's new."""
    state = resnet18_state(source_classes)
    path = tmp_path / (f"weights.{form}" if form.lower() == "safetensors" else "weights.pt")
    if form.lower() == "safetensors":
        save_file(state, path)
    elif form == "nested":  # a training script's checkpoint of a DDP model
        torch.save({"state_dict": {f"module.{key}": value for key, value in state.items()}, "epoch": 3}, path)
    elif form == "headless":
        torch.save({key: value for key, value in state.items() if not key.startswith("fc.")}, path)
    else:  # legacy: the format of torch before 1.6 (a pickle, not a zip archive)
        torch.save(state, path, _use_new_zipfile_serialization=form != "legacy")
    torch.manual_seed(1)
    network = build_model("resnet18", 10)
    initial = {key: value.clone() for key, value in network.state_dict().items()}
    load_pretrained(network, str(path), "resnet18")
    for key, value in network.state_dict().items():
        new_classifier = key.startswith("fc.") and (source_classes != 10 or form == "headless")
        assert torch.equal(value, initial[key] if new_classifier else state[key].to(value.dtype)), key


def bad_weights(kind, path):
    """Writes a weights file that does not fit a 3-channel resnet18 to `path`; the error expected
    (a regular expression)."""
    state = resnet18_state(10)
    if kind == "missing":
        del state["layer3.0.bn1.weight"]
        torch.save(state, path)
        return r"missing: layer3\.0\.bn1\.weight$"
    if kind == "half a classifier":  # it fits, so it is loaded, whole: its bias stayed random
        del state["fc.bias"]
        torch.save(state, path)
        return r"missing: fc\.bias$"
    if kind == "unexpected":
        torch.save({**state, "layer5.0.conv1.weight": torch.zeros(1)}, path)
        return r"unexpected: layer5\.0\.conv1\.weight$"
    if kind == "shape":  # a grayscale network's weights
        torch.save(resnet18_state(10, in_channels=1), path)
        return re.escape("of another shape: conv1.weight [64, 1, 7, 7] in the file, [64, 3, 7, 7] in the network")
    if kind == "resnet50":  # every resnet18 name is a resnet50 one
        torch.save(build_model("resnet50", 10).state_dict(), path)
        return (r"network; unexpected: layer1\.0\.conv3\.weight, .* \(\+\d+ more\); "
                r"of another shape: layer1\.0\.conv1\.weight \[64, 64, 1, 1\] in the file, \[64, 64, 3, 3\]")
    if kind == "payload":
        torch.save({**state, "note": Payload(path.parent / "ran")}, path)
        return "refused"
    if kind == "not a state dict":
        torch.save([1, 2, 3], path)
        return "holds no state dict"
    if kind == "NaN":
        state["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
        torch.save(state, path)
        return r"layer2\.0\.conv1\.weight holds NaN or infinite values$"
    if kind in ("sparse", "meta"):
        weight = state["fc.weight"]
        torch.save({**state, "fc.weight": weight.to_sparse() if kind == "sparse" else weight.to("meta")}, path)
        return rf"fc\.weight is a {kind} tensor, not weights"
    path.write_bytes(random.Random(0).randbytes(4096))  # neither a zip archive nor a pickle: starts with 0xcd
    return "not a safetensors or torch weights file"


@pytest.mark.parametrize("kind", ["missing", "half a classifier", "unexpected", "shape", "resnet50", "payload", "not a state dict",
                                  "NaN", "sparse", "meta", "random", "random safetensors"])
def test_pretrained_weights_that_do_not_fit_are_refused_naming_the_file(tmp_path, kind):
    path = tmp_path / ("weights.safetensors" if "safetensors" in kind else "weights.pt")
    expected = bad_weights(kind, path)
    network = build_model("resnet18", 10)
    initial = {key: value.clone() for key, value in network.state_dict().items()}
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + expected) as caught:
        load_pretrained(network, str(path), "resnet18")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "ran").exists(), "no code ran"
    assert all(torch.equal(value, initial[key]) for key, value in network.state_dict().items()), "nothing loaded"


def test_recalibrate_batchnorm_sets_the_statistics_of_the_current_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Dropout(0.5), nn.Linear(3, 2), nn.BatchNorm1d(2))
    model.train()
    for _ in range(5):  # stale running averages, as training leaves them
        model(torch.randn(8, 4) * 3 + 1)
    batches = [torch.randn(16, 4, generator=torch.Generator().manual_seed(seed)) for seed in range(3)]
    recalibrate_batchnorm(model, batches)

    assert model.training, "the training mode is restored"
    assert [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm1d)] == [0.1, 0.1]
    first = torch.stack([model[0](x) for x in batches])                  # [3, 16, 3]
    torch.testing.assert_close(model[1].running_mean, first.mean(1).mean(0))
    torch.testing.assert_close(model[1].running_var, first.var(1).mean(0))  # unbiased per batch, averaged
    with torch.no_grad():  # each BatchNorm normalizes by its batch's statistics meanwhile; no dropout
        norm = model[1]
        second = torch.stack([model[3](nn.functional.batch_norm(model[0](x), None, None, norm.weight, norm.bias,
                                                                training=True)) for x in batches])
    torch.testing.assert_close(model[4].running_mean, second.mean(1).mean(0))
    torch.testing.assert_close(model[4].running_var, second.var(1).mean(0))


def test_recalibrate_batchnorm_leaves_a_model_without_batchnorm_alone():
    model = nn.Linear(4, 2).eval()
    recalibrate_batchnorm(model, [torch.randn(3, 4)])
    assert not model.training


def test_recalibrate_batchnorm_skips_single_samples_and_keeps_the_statistics_without_any_batch():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    with torch.no_grad():
        model[1].running_mean.fill_(2.0)
    recalibrate_batchnorm(model, [torch.randn(1, 4)])
    torch.testing.assert_close(model[1].running_mean, torch.full((3,), 2.0))
    batch = torch.randn(5, 4)
    recalibrate_batchnorm(model, [batch, torch.randn(1, 4)])
    torch.testing.assert_close(model[1].running_mean, model[0](batch).mean(0))
