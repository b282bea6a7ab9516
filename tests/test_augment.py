"""The augment= presets (conf/augment/): timm's RandAugment / TrivialAugment and random erasing in
the training transform of the image datasets, the evaluation transform untouched, and one line
for a dataset that takes no augmentation keys."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from framework import registry
from framework.config import validate
from framework.errors import ConfigError
from tests.helpers import (compose_cfg, lines as stderr_lines, run_cli_in_process, write_cifar10, write_csv_images,
                           write_imagefolder)

AUGMENT_FILES = sorted((registry.CONF_DIR / "augment").glob("*.yaml"))

#: timm's RandAugment ops with inc1 (severity rising with the magnitude): the 14 of the paper's
#: table (Identity aside, Cutout done as random erasing) plus SolarizeAdd, in timm's order.
INCREASING_OPS = ["AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                  "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                  "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]

#: The datasets whose callable takes the augmentation keys (image files and torchvision sets).
SUPPORTED = "cifar10, cifar100, csv, fashion_mnist, imagefolder, mnist"


def names(transform) -> list[str]:
    return [type(t).__name__ for t in transform.transforms]


def only(transform, name: str):
    (found,) = [t for t in transform.transforms if type(t).__name__ == name]
    return found


@pytest.fixture
def folder(tmp_path):
    write_imagefolder(tmp_path, per_class=(2, 1), size=16)  # 4 training, 2 validation 16x16 PNG files
    return tmp_path


def build(*overrides: str):
    cfg = validate(compose_cfg(*overrides))
    return cfg, registry.instantiate(cfg.dataset, "dataset", seed=0)


def test_randaugment_preset_puts_timm_randaugment_and_random_erasing_in_the_training_transform(folder):
    cfg, data = build("augment=randaugment", "dataset=imagefolder", f"dataset.root={folder}", "dataset.img_size=16")
    assert (cfg.dataset.augment, cfg.dataset.auto_augment, cfg.dataset.re_prob, cfg.dataset.re_mode,
            cfg.dataset.re_count) == (True, "rand-m9-mstd0.5-inc1", 0.25, "pixel", 1)
    train = data.train.transform
    assert names(train) == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment",
                            "MaybeToTensor", "Normalize", "RandomErasing"]  # no ColorJitter beside a policy
    policy = only(train, "RandAugment")
    assert policy.num_layers == 2 and policy.choice_weights is None  # n: timm's default, ops drawn uniformly
    assert [op.name for op in policy.ops] == INCREASING_OPS  # inc1
    assert {(op.prob, op.magnitude, op.magnitude_std) for op in policy.ops} == {(0.5, 9, 0.5)}  # p default, m9, mstd0.5
    erase = only(train, "RandomErasing")
    assert (erase.probability, erase.mode, erase.min_count, erase.max_count) == (0.25, "pixel", 1, 1)
    x, y = data.train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32


def test_trivialaugment_preset_is_one_op_always_applied_at_a_uniform_magnitude(tmp_path):
    write_csv_images(tmp_path, per_class=(2, 1), size=16)
    cfg, data = build("augment=trivialaugment", "dataset=csv", f"dataset.train={tmp_path / 'train.csv'}",
                      f"dataset.val={tmp_path / 'val.csv'}", "dataset.img_size=16")
    assert cfg.dataset.auto_augment == "rand-m10-n1-p1-mstd101-inc1"
    train = data.train.transform
    policy = only(train, "RandAugment")
    assert policy.num_layers == 1 and [op.name for op in policy.ops] == INCREASING_OPS  # n1, inc1
    # p1: always applied; m10 with mstd over 100: magnitude uniform in [0, 10] (timm: std inf = uniform)
    assert {(op.prob, op.magnitude, op.magnitude_std) for op in policy.ops} == {(1.0, 10, math.inf)}
    erase = only(train, "RandomErasing")
    assert (erase.probability, erase.mode, erase.max_count) == (0.1, "const", 1)
    assert names(train)[-1] == "RandomErasing"  # after Normalize: erased pixels are 0 = the mean colour


def test_evaluation_transform_is_unchanged_and_exact(folder):
    _, plain = build("dataset=imagefolder", f"dataset.root={folder}", "dataset.img_size=16")
    _, augmented = build("augment=randaugment", "dataset=imagefolder", f"dataset.root={folder}", "dataset.img_size=16")
    for data in (plain, augmented):
        assert names(data.val.transform) == ["Resize", "CenterCrop", "MaybeToTensor", "Normalize"]
    x, _ = augmented.val[0]
    pixels = np.asarray(Image.open(augmented.val.paths[0]).convert("RGB"), dtype=np.float64) / 255  # (16, 16, 3)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])  # ImageNet's
    expected = torch.tensor((pixels - mean) / std).permute(2, 0, 1)  # 16 px resized and cropped to 16 px: as is
    assert torch.allclose(x.double(), expected, atol=1e-6)
    assert torch.equal(x, plain.val[0][0])


def test_randerase_preset_erases_without_a_policy(folder):
    _, data = build("augment=randerase", "dataset=imagefolder", f"dataset.root={folder}", "dataset.img_size=16")
    train = data.train.transform
    assert "RandAugment" not in names(train) and "ColorJitter" in names(train)  # timm's default jitter stays
    assert only(train, "RandomErasing").probability == 0.25


def test_torchvision_set_runs_the_policy_and_erasing_per_sample_on_the_standard_loader(tmp_path, monkeypatch):
    import torchvision.datasets.cifar

    from framework.data import make_loaders

    write_cifar10(tmp_path, n_per_batch=4)  # 20 training, 4 test 32x32 images
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)  # published MD5s
    _, data = build("augment=randaugment", "dataset=cifar10", f"dataset.root={tmp_path}", "dataset.download=false")
    policy = only(data.train.policy, "RandAugment")
    assert policy.num_layers == 2
    assert {(op.prob, op.magnitude, op.magnitude_std) for op in policy.ops} == {(0.5, 9, 0.5)}
    assert names(data.train.augment) == ["RandomCrop", "RandomHorizontalFlip", "RandomErasing"]
    assert only(data.train.augment, "RandomErasing").probability == 0.25
    assert data.val.policy is None and data.val.augment is None  # the test split is never augmented
    x, _ = data.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    train, _ = make_loaders(data, 4, 0, torch.device("cpu"), "auto")
    assert type(train).__name__ == "DataLoader"  # the device loader would skip the per-sample transforms
    with pytest.raises(ConfigError) as err:
        make_loaders(data, 4, 0, torch.device("cpu"), "device")
    assert err.value.messages == ["loader=device: ImageTensorDataset: not a tensor dataset without per-sample "
                                  "augmentation; use loader=standard (or auto)"]


def test_posterize_keeping_0_bits_gives_a_black_image_instead_of_pillow_13s_error():
    from framework.data.augment import policy_transform

    policy = only(policy_transform("rand-m9-mstd0.5-inc1", 3, 16, [0.5, 0.5, 0.5]), "RandAugment")
    (op,) = [op for op in policy.ops if op.name == "PosterizeIncreasing"]
    op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0  # top of the scale: keep 4 - 4 = 0 bits
    image = Image.fromarray(np.full((16, 16, 3), 200, dtype=np.uint8))
    assert np.asarray(op(image)).max() == 0  # 0 bits kept: every pixel 0 (Pillow < 13's result)


def test_unsupported_dataset_is_one_line_naming_augment_and_the_datasets_that_take_it():
    with initialize_config_dir(config_dir=str(registry.CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["augment=randaugment", "dataset=digits"],
                      return_hydra_config=True)  # with Hydra's choices, as the running app has them
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert err.value.messages == [
        "augment=randaugment: dataset=digits (framework.data.digits) takes no augmentation keys (dataset.augment, "
        "dataset.auto_augment, dataset.re_prob, dataset.re_mode, dataset.re_count); augment= works with "
        f"dataset={SUPPORTED}: pick one of them, or drop augment="]


def test_unsupported_dataset_ends_the_cli_with_that_line_and_status_2(tmp_path, capfd):
    code = run_cli_in_process(["augment=trivialaugment", "dataset=mnist5k"], tmp_path / "run")
    out, err = capfd.readouterr()
    assert code == 2 and stderr_lines(err) == [
        "error: augment=trivialaugment: dataset=mnist5k (framework.data.mnist5k) takes no augmentation keys "
        "(dataset.augment, dataset.auto_augment, dataset.re_prob, dataset.re_mode, dataset.re_count); augment= works "
        f"with dataset={SUPPORTED}: pick one of them, or drop augment="], err
    assert "Traceback" not in out + err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, line", [
    (["dataset.auto_augment=bogus"], "dataset.auto_augment=bogus: not a timm augmentation policy (Unknown AA policy "
     "bogus); use e.g. rand-m9-mstd0.5-inc1 (RandAugment), rand-m10-n1-p1-mstd101-inc1 (TrivialAugment), "
     "augmix-m3-w3 (AugMix), original or v0 (AutoAugment), or null"),
    (["augment=randaugment", "dataset.augment=false"], "dataset.auto_augment=rand-m9-mstd0.5-inc1: is training "
     "augmentation, which dataset.augment=false turns off; set dataset.augment=true, or dataset.auto_augment=null"),
    (["dataset.re_prob=1.5"],
     "dataset.re_prob=1.5: must be a probability in [0, 1] (0 = no random erasing), e.g. 0.25"),
    (["dataset.re_mode=noise"], "dataset.re_mode=noise: use const, rand, pixel (timm's random-erasing fill)"),
])
def test_bad_augmentation_values_are_one_line(folder, overrides, line):
    with pytest.raises(ConfigError) as err:
        build("dataset=imagefolder", f"dataset.root={folder}", "dataset.img_size=16", *overrides)
    assert err.value.messages == [line]


def test_augment_presets_found_headed_commented_and_composing():
    assert [p.stem for p in AUGMENT_FILES] == ["randaugment", "randerase", "trivialaugment"]
    key_line = re.compile(r"^\s*[A-Za-z_][\w.]*:\s*\S")
    for path in AUGMENT_FILES:
        lines = path.read_text().splitlines()
        assert lines[0] == "# @package _global_" and lines[1].startswith(f"# python train.py augment={path.stem} ")
        assert all(" # " in line for line in lines if key_line.match(line)), path.name
        for dataset in ("imagefolder", "mnist"):  # image files; a torchvision set whose augment is off by default
            cfg = validate(compose_cfg(f"augment={path.stem}", f"dataset={dataset}"))
            assert cfg.dataset.augment is True and cfg.dataset.re_count == 1, (path.stem, dataset)
