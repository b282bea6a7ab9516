"""Models: timm architectures sized by the dataset."""
from __future__ import annotations

import pytest
import torch

from framework.config import ConfigError
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
