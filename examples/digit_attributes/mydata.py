"""An own dataset callable: scikit-learn's digits (offline) with three yes/no attributes per image.

Each 8x8 digit image gets the multi-hot label ``[even, large (>= 5), prime]``, so one image can
have several attributes (the multi-label kind of problem, like findings on a chest X-ray).
"""
import torch
from torch.utils.data import TensorDataset

from framework.data import DataBundle

ATTRIBUTES = ["even", "large", "prime"]


def digit_attributes(seed: int, val_frac: float = 0.2, test_frac: float = 0.2, data_seed: int = 0) -> DataBundle:
    """Train / validation / test splits of the 1,797 digits with multi-hot attribute labels.

    Args:
        seed: the run's seed (runtime input; unused: the split depends on ``data_seed`` only).
        val_frac: fraction of the images held out for validation.
        test_frac: fraction held out for the test split.
        data_seed: seed of the split.

    Returns:
        A DataBundle whose samples are ``(image (1, 8, 8) float32, labels (3,) float32 of 0/1)``,
        ``num_classes=3`` outputs and ``classes=ATTRIBUTES``.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    d = torch.tensor(bunch.target)
    y = torch.stack([d % 2 == 0, d >= 5, (d == 2) | (d == 3) | (d == 5) | (d == 7)], 1).float()  # (1797, 3)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(data_seed))
    n_val, n_test = round(val_frac * len(x)), round(test_frac * len(x))
    val, test, train = order[:n_val], order[n_val:n_val + n_test], order[n_val + n_test:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std

    def split(idx):
        return TensorDataset(x[idx], y[idx])

    return DataBundle(split(train), split(val), num_classes=3, in_chans=1, img_size=8, test=split(test),
                      classes=ATTRIBUTES)
