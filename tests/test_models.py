"""engine.models: the shared interface, parameter counts, and MultiHead."""
import pytest
import torch
from torch import nn

from engine.models import MODELS, MultiHead, build_model
from engine.models.base import recalibrate_batchnorm

RESNETS = ["preact_resnet18", "preact_resnet34"]
IMAGE_MODELS = [name for name in MODELS if name != "mlp"]
# (name, in_channels, image_size, num_classes); 8x8 inputs only for small_cnn; the MLP takes
# feature vectors [B, in_channels] (64: the digits' pixels; 3: fewer features than classes).
CASES = [
    (name, *shape)
    for name in IMAGE_MODELS
    for shape in [(3, 32, 10), (1, 28, 10), (3, 32, 100)] + ([(1, 8, 10)] if name == "small_cnn" else [])
] + [("mlp", 64, 1, 10), ("mlp", 3, 1, 100)]


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
    assert len(maps) == len(model.stage_channels) == (4 if name in RESNETS else 3)
    assert [m.shape[1] for m in maps] == model.stage_channels
    assert model.feature_dim == model.stage_channels[-1]
    torch.testing.assert_close(maps[-1] if name == "mlp" else maps[-1].mean((2, 3)), features)


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


@pytest.mark.parametrize(
    "name,low,high",
    [("preact_resnet18", 11.0e6, 11.4e6), ("preact_resnet34", 21.0e6, 21.5e6), ("small_cnn", 0, 0.5e6),
     ("mlp", 0, 0.1e6)],
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


def test_multihead_without_stage_heads_and_reserved_names():
    model, x = make("small_cnn", 1, 28, 10)
    assert set(MultiHead(model, extra_heads={"negative": 10})(x)) == {"main", "negative"}
    for reserved in ("main", "features", "stage0", "stage1_features"):
        with pytest.raises(ValueError, match="reserved"):
            MultiHead(model, extra_heads={reserved: 10})


def test_unknown_model_name():
    with pytest.raises(ValueError, match="mlp.*preact_resnet18.*small_cnn"):
        build_model("resnet50", 10)


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
