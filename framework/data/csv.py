"""Images listed in CSV files: a column of image paths and the label columns (a class per image,
several 0/1 labels, or numbers to regress), with timm's transforms (``dataset=csv``)."""
from __future__ import annotations

import logging
import math
import os
from typing import Optional, Sequence, Union

import torch
from torch.utils.data import Dataset

from framework.data.base import DataBundle
from framework.data.imagefolder import _drop_unreadable, image_transforms, read_image, unreadable
from framework.errors import ConfigError
from framework.tasks import LABEL_TYPES  # what a sample's label is, by the task (label_type)

log = logging.getLogger(__name__)


class CsvImages(Dataset):
    """Image files and their labels, as a CSV lists them.

    Args:
        samples: ``(image path, row)`` per sample: the file (absolute, or relative to the
            working directory) and its row of ``labels``.
        labels: ``(R,)`` int64 class indices, or ``(R, K)`` float32 (0/1 labels or values).
        transform: PIL RGB image -> float32 ``(3, S, S)`` (timm's).
        classes: the names of the ``K`` outputs (classes, or the label columns).
        labeled: False for a test CSV without label columns: ``labels`` hold -1 (class) or NaN,
            placeholders that ``mode=predict`` never reads (``mode=test`` refuses such a split).

    Items are ``(image (3, S, S) float32, label)``, the label an int64 scalar or float32
    ``(K,)``. The image is read at first access (:func:`~framework.data.imagefolder.read_image`:
    a file PIL cannot read ends the run with one line naming it).
    """

    def __init__(self, samples: list[tuple[str, int]], labels: torch.Tensor, transform, classes: list[str],
                 labeled: bool = True):
        self.samples, self.labels, self.transform, self.classes = samples, labels, transform, classes
        self.labeled = labeled  # False: a test CSV of paths only (mode=predict); its labels are placeholders

    @property
    def paths(self) -> list[str]:
        """The image file of each sample, by index (``mode=predict`` writes them)."""
        return [path for path, _ in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, row = self.samples[i]
        return self.transform(read_image(path)), self.labels[row]


def csv_dataset(
    train: str,
    val: Optional[str] = None,
    test: Optional[str] = None,
    root: Optional[str] = None,
    path_column: str = "path",
    label_columns: Optional[Union[str, Sequence[str]]] = ("label",),
    label_type: str = "class",
    val_frac: Optional[float] = 0.1,
    img_size: Optional[int] = None,
    augment: bool = True,
    model_name: Optional[str] = None,
    pretrained: bool = False,
    data_seed: int = 0,
    skip_unreadable: bool = False,
    auto_augment: Optional[str] = None,
    re_prob: float = 0.0,
    re_mode: str = "const",
    re_count: int = 1,
) -> DataBundle:
    """Images listed in CSV files (a header row; one row per image), for a class, multi-label
    or regression task.

    Each CSV has a column of image paths (``path_column``) and the label columns:

    - ``label_type="class"``: one column of class names or integers; the classes are the
      training CSV's distinct values, sorted (integers as numbers, so labels ``0..K-1`` keep
      their values); label = the class index, int64 scalar.
    - ``"multi_hot"``: one 0/1 column per label (the classes are the column names); label =
      float32 ``(K,)`` of 0/1.
    - ``"value"``: one number column per regression target (the column names); label =
      float32 ``(K,)``.

    Training images go through timm's training transform when ``augment`` (with timm's
    ``auto_augment`` policy and random erasing when set), validation and test images through its
    evaluation transform (:func:`~framework.data.imagefolder.image_transforms`,
    as ``dataset=imagefolder``). Every split has ``paths``, the image file of each sample.

    Args:
        train: the training CSV.
        val: the validation CSV; null = hold out ``val_frac`` of the training rows (seeded by
            ``data_seed``).
        test: the test CSV; null = no test split.
        root: the folder the image paths are relative to; null = each CSV's own folder.
        path_column: the column of image paths.
        label_columns: the label columns (a list, or one name); null = every column but
            ``path_column``.
        label_type: ``class``, ``multi_hot`` or ``value`` (runtime input from the task).
        val_frac: fraction of the training rows held out when ``val`` is null, in (0, 1).
        img_size: side of the model's input, pixels; null = the pretrained config's or 224.
        augment: timm's training augmentation (else the evaluation transform for training too).
        model_name: the timm model (``${model.name}``; null for your own), for its pretrained
            mean, std and input size.
        pretrained: use the model's pretrained input size, mean and std.
        data_seed: seed of the held-out split.
        skip_unreadable: decode every image once now and leave out the missing, empty and
            unreadable ones (one warning line) instead of refusing them.
        auto_augment: timm's augmentation policy for training images (``augment=randaugment``:
            ``rand-m9-mstd0.5-inc1``); null = none. Needs ``augment``.
        re_prob: random-erasing probability per training image, in [0, 1]; 0 = off.
        re_mode: random-erasing fill, ``const``, ``rand`` or ``pixel``.
        re_count: most erased rectangles per image, >= 1.

    Returns:
        A :class:`DataBundle` of :class:`CsvImages`: ``(image (3, S, S) float32, label)``,
        ``num_classes`` = ``K`` (classes, or label columns), ``classes`` their names.

    Raises:
        ConfigError: before training, one line naming the key and the fix: an unknown
            ``label_type``; a CSV that is missing or has no rows; a missing column (the CSV's
            columns listed); ``label_type=class`` with more than one label column; an empty
            label or path cell; a value other than 0/1 in a multi-label column, or a
            non-number in a regression column; image files that are missing (the first named,
            and the count) or empty (unless ``skip_unreadable``); validation or test classes
            the training CSV does not have; ``val_frac`` out of range; no image left; an
            augmentation key out of range, set with ``augment`` off, or a policy timm does not know.
        UnreadableImage: (a ConfigError, raised when the file is first read) an image file
            PIL cannot open or decode; fix or remove it, or set ``skip_unreadable``.
    """
    if label_type not in LABEL_TYPES:
        raise ConfigError(f"dataset: label_type={label_type} is not one of {', '.join(LABEL_TYPES)}; "
                          "use a task whose label_type is one of them")
    if val is None and (val_frac is None or not 0 < val_frac < 1):
        raise ConfigError(f"dataset.val_frac={val_frac}: with dataset.val=null it must be in (0, 1), e.g. 0.1")
    train_tf, eval_tf, size, _ = image_transforms(img_size, augment, model_name, pretrained, auto_augment, re_prob,
                                                  re_mode, re_count)
    if isinstance(label_columns, str):
        label_columns = [label_columns]

    header, rows = _read("train", train)
    columns = [c for c in header if c != path_column] if label_columns is None else list(label_columns)
    if label_type == "class" and len(columns) != 1:
        raise ConfigError(f"dataset.label_columns={_shown(columns)}: label_type class takes one column (the class of "
                          "each image); several 0/1 columns are a multi-label task (label_type multi_hot)")
    if not columns:
        raise ConfigError(f"dataset.label_columns: {train} has no column besides {path_column}; add the label columns")
    _check_columns("train", train, header, path_column, columns)
    if label_type == "class":
        values = {r.get(columns[0]) or "" for _, r in rows} - {""}  # (an empty cell is refused below)
        numeric = all(_is_int(v) for v in values)
        classes = sorted(values, key=int) if numeric else sorted(values)
    else:
        classes = list(columns)

    files: dict[str, tuple[str, list[tuple[int, dict]]]] = {"train": (train, rows)}
    unlabeled = set()  # a test CSV of image paths only: images to predict
    for key, file in (("val", val), ("test", test)):
        if file is not None:
            header, split_rows = _read(key, file)
            if key == "test" and not any(c in header for c in columns):
                unlabeled.add(key)
            _check_columns(key, file, header, path_column, [] if key in unlabeled else columns)
            files[key] = (file, split_rows)
    splits, empty = {}, []
    for key, (file, split_rows) in files.items():
        base = root if root is not None else os.path.dirname(os.path.abspath(file))
        labels = (_labels(key, file, split_rows, columns, label_type, classes) if key not in unlabeled else
                  torch.full((len(split_rows),), -1) if label_type == "class" else
                  torch.full((len(split_rows), len(classes)), float("nan")))
        samples = [(os.path.join(base, _cell(key, file, line, r, path_column)), i)
                   for i, (line, r) in enumerate(split_rows)]
        missing = [(path, line) for (path, _), (line, _) in zip(samples, split_rows) if not os.path.isfile(path)]
        if missing and not skip_unreadable:
            where = f"dataset.root={root}" if root is not None else "the CSV's folder; or set dataset.root"
            raise ConfigError(f"dataset.{key}={file}: {len(missing)} of its {len(samples)} image files are missing, "
                              f"the first {missing[0][0]} (line {missing[0][1]}); fix the paths (relative to {where}), "
                              "or set dataset.skip_unreadable=true to leave them out")
        empty += [path for path, _ in samples if os.path.isfile(path) and os.path.getsize(path) == 0]
        splits[key] = CsvImages(samples, labels, eval_tf, classes, labeled=key not in unlabeled)
    if empty and not skip_unreadable:
        more = f"; {len(empty)} empty files in all" if len(empty) > 1 else ""
        raise ConfigError(unreadable(empty[0], f"empty file, 0 bytes{more}"))
    if skip_unreadable:
        _drop_unreadable(list(splits.values()), [])
        for key, split in splits.items():
            if not split.samples:
                raise ConfigError(f"dataset.skip_unreadable=true: no readable image left in dataset.{key}="
                                  f"{files[key][0]}; put readable images there")
    full = splits["train"]
    full.transform = train_tf
    if val is None:
        order = torch.randperm(len(full), generator=torch.Generator().manual_seed(data_seed)).tolist()
        n_val = max(1, round(val_frac * len(order)))
        if n_val >= len(order):
            raise ConfigError(f"dataset.val_frac={val_frac}: leaves no training image of the {len(order)} in "
                              f"{train}; use a smaller fraction or a val CSV")
        splits["train"] = CsvImages([full.samples[i] for i in order[n_val:]], full.labels, train_tf, classes)
        splits["val"] = CsvImages([full.samples[i] for i in order[:n_val]], full.labels, eval_tf, classes)
    log.info("csv %s: %s %d %s, %s, %d px", train, label_type, len(classes),
             "classes" if label_type == "class" else "columns",
             " / ".join(f"{len(s)} {k}" for k, s in splits.items()), size)
    return DataBundle(splits["train"], splits["val"], len(classes), 3, size, test=splits.get("test"),
                      classes=[str(c) for c in classes])


def _read(key: str, file: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """The header and the ``(line number, row)`` pairs of a CSV (cells stripped of spaces).

    Raises:
        ConfigError: no such file, no header, no rows.
    """
    import csv

    if not os.path.isfile(file):
        raise ConfigError(f"dataset.{key}={file}: no such file ({os.path.abspath(file)}); give the CSV of image "
                          "paths and labels (a header row, then one row per image)")
    with open(file, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, skipinitialspace=True)
        header = [h.strip() for h in next(reader, [])]
        rows = [(reader.line_num, dict(zip(header, (c.strip() for c in cells)))) for cells in reader if any(
            c.strip() for c in cells)]
    if not header or not rows:
        raise ConfigError(f"dataset.{key}={file}: {'no header row' if not header else 'no rows below the header'}; "
                          "a header row, then one row per image")
    return header, rows


def _check_columns(key: str, file: str, header: list[str], path_column: str, columns: list[str]) -> None:
    """Raises ConfigError: the path column or a label column is not in the CSV (its columns listed)."""
    for name, wanted in (("path_column", [path_column]), ("label_columns", columns)):
        absent = [c for c in wanted if c not in header]
        if absent:
            shown = path_column if name == "path_column" else _shown(columns)
            raise ConfigError(f"dataset.{name}={shown}: no column '{absent[0]}' in dataset.{key}={file}; its columns "
                              f"are {', '.join(header)}")


def _cell(key: str, file: str, line: int, row: dict, column: str) -> str:
    """A non-empty cell (a short row lacks its last cells). Raises ConfigError: an empty one."""
    value = row.get(column) or ""
    if not value:
        raise ConfigError(f"dataset.{key}={file}: line {line} has no value in column '{column}'; fill it or "
                          "remove the row")
    return value


def _labels(key: str, file: str, rows: list, columns: list[str], label_type: str, classes: list) -> torch.Tensor:
    """``(R,)`` int64 class indices or ``(R, K)`` float32 of a CSV's rows.

    Raises:
        ConfigError: an empty cell; a class the training CSV lacks; a multi-label value other
            than 0/1; a regression value that is not a finite number.
    """
    if label_type == "class":
        index = {c: i for i, c in enumerate(classes)}
        values = [(_cell(key, file, line, r, columns[0]), line) for line, r in rows]
        unseen = [(v, line) for v, line in values if v not in index]
        if unseen:
            names = sorted({v for v, _ in unseen})
            raise ConfigError(f"dataset.{key}={file}: class{'es' if len(names) > 1 else ''} {', '.join(names[:5])}"
                              f"{', ...' if len(names) > 5 else ''} (line {unseen[0][1]}) not in dataset.train's "
                              f"classes ({', '.join(map(str, classes[:10]))}{', ...' if len(classes) > 10 else ''}); "
                              "every class needs training images")
        return torch.tensor([index[v] for v, _ in values], dtype=torch.int64)
    out = torch.empty(len(rows), len(columns), dtype=torch.float32)
    for i, (line, r) in enumerate(rows):
        for j, column in enumerate(columns):
            text = _cell(key, file, line, r, column)
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if label_type == "multi_hot" and value not in (0.0, 1.0):
                raise ConfigError(f"dataset.label_columns: column '{column}' of dataset.{key}={file} holds {text} "
                                  f"on line {line}; a multi-label column (label_type multi_hot) holds 0 or 1")
            if label_type == "value" and not math.isfinite(value):
                raise ConfigError(f"dataset.label_columns: column '{column}' of dataset.{key}={file} holds {text} "
                                  f"on line {line}, not a finite number; regression targets (label_type value) "
                                  "are numbers")
            out[i, j] = value
    return out


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _shown(columns: Sequence[str]) -> str:
    """A list as Hydra's command line writes it: ``[a,b]``."""
    return f"[{','.join(columns)}]"
