"""Models: timm architectures sized by the dataset."""
from __future__ import annotations

import pytest
import torch

from framework.errors import ConfigError
from framework.models import create_model


def test_vit_gets_img_size_from_the_dataset():
    model = create_model("test_vit", num_classes=7, in_chans=3, img_size=32)
    assert model.patch_embed.img_size == (32, 32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_cnn_without_img_size_argument_still_builds():
    model = create_model("resnet10t", num_classes=10, in_chans=1, img_size=32)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert model.conv1[0].in_channels == 1


def test_unknown_architecture_is_a_config_error_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"model.name=resnet19: .*did you mean"):
        create_model("resnet19", num_classes=10, in_chans=1, img_size=32)


def test_unknown_constructor_argument_is_a_config_error():
    with pytest.raises(ConfigError, match="model: resnet10t rejected an argument"):
        create_model("resnet10t", num_classes=10, in_chans=1, img_size=32, not_an_arg=1)


def test_pretrained_weights_load_and_adapt_to_the_dataset(tmp_path):
    """The real pretrained path, offline: timm loads a local weight file (as it would a hub
    download), sums the stem over RGB for 1 channel and drops the 1000-class head."""
    import timm

    src = timm.create_model("test_resnet", num_classes=1000, in_chans=3)
    torch.save(src.state_dict(), tmp_path / "weights.pth")
    model = create_model("test_resnet", num_classes=10, in_chans=1, img_size=32, pretrained=True,
                         pretrained_cfg_overlay={"file": str(tmp_path / "weights.pth")})
    ref, got = src.state_dict(), model.state_dict()
    assert torch.allclose(ref["conv1.0.weight"].sum(1, keepdim=True), got["conv1.0.weight"])
    assert torch.equal(ref["layer1.0.conv1.weight"], got["layer1.0.conv1.weight"])
    assert got["fc.weight"].shape == (10, ref["fc.weight"].shape[1])


def test_a_batch_of_one_is_refused_only_where_batch_norm_sees_one_value_per_channel():
    """BatchNorm2d on 4x4 maps trains on a batch of 1 (16 values per channel); BatchNorm1d
    after global pooling gets 1 value per channel and cannot (PyTorch raises in train mode)."""
    import pytest
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from framework.errors import ConfigError
    from framework.models import check_batch_norm_batches

    data = TensorDataset(torch.randn(5, 3, 4, 4), torch.zeros(5, dtype=torch.int64))
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4))
    pooled = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                 torch.nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        pooled(torch.randn(1, 3, 4, 4))  # the failure the check foresees
    conv(torch.randn(1, 3, 4, 4))  # and what works
    check_batch_norm_batches(conv, DataLoader(data, batch_size=1))
    check_batch_norm_batches(pooled, DataLoader(data, batch_size=2, drop_last=True))  # batches of 2 only
    with pytest.raises(ConfigError, match="batch_size=1: a training batch of 1 sample reaches a BatchNorm1d layer as one value per "
                                               "channel .*; use batch_size >= 2"):
        check_batch_norm_batches(pooled, DataLoader(data, batch_size=1))
    assert pooled.training and all(m.training for m in pooled.modules())


@pytest.mark.parametrize("outputs, label, message", [
    (3, 1, None),  # (1, 3) outputs, label 1 of 3: fine
    (4, 1, "model._target_=mine.Net: gives outputs of shape (1, 4) for one sample; the task needs (1, 3)"),
    (3, 3, "task._target_=framework.tasks.Classification: its loss fails on the first training sample (label 3;"),
])
def test_one_training_sample_goes_through_model_and_loss_before_training(outputs, label, message):
    from types import SimpleNamespace

    from framework.errors import ConfigError
    from framework.models import check_outputs
    from framework.tasks import Classification

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, outputs))
    data = SimpleNamespace(train=[(torch.zeros(2, 4, 4), torch.tensor(label))], num_classes=3)
    if message is None:
        check_outputs(model, data, Classification(3), "mine.Net")
        assert model.training  # left in train mode
        return
    with pytest.raises(ConfigError) as raised:
        check_outputs(model, data, Classification(3), "mine.Net")
    assert str(raised.value).startswith(message)


def test_an_input_the_model_does_not_take_is_one_line():
    from types import SimpleNamespace

    from framework.errors import ConfigError
    from framework.models import check_outputs
    from framework.tasks import Classification

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))  # made for 3x8x8 images
    data = SimpleNamespace(train=[(torch.zeros(1, 8, 8), torch.tensor(0))], num_classes=3)
    with pytest.raises(ConfigError, match=r"^model._target_=mine.Net: a training sample of shape \(1, 8, 8\) does not "
                                          r"go through it \(RuntimeError: mat1 and mat2 shapes cannot be multiplied"):
        check_outputs(model, data, Classification(3), "mine.Net")
