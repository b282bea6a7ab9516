"""Datasets (``conf/dataset/*.yaml``) and the loaders built from them.

A dataset callable returns a :class:`DataBundle`: train and validation (and optionally test)
``Dataset`` objects plus what the model must adapt to (outputs, channels, image size) and the
names of the outputs; :class:`DataBundle` states the contract for a dataset of your own.
"""
from framework.data.base import DataBundle, ImageTensorDataset
from framework.data.bundled import digits, mnist5k, synthetic
from framework.data.csv import CsvImages, csv_dataset
from framework.data.imagefolder import imagefolder
from framework.data.loaders import DeviceLoader, EpochSampler, eval_loader, fits_on_device, make_loaders
from framework.data.torchvision_sets import TORCHVISION, torchvision_dataset

__all__ = ["imagefolder", "csv_dataset", "CsvImages", "DataBundle", "ImageTensorDataset", "digits", "mnist5k",
           "synthetic", "DeviceLoader", "EpochSampler", "eval_loader", "fits_on_device", "make_loaders",
           "TORCHVISION", "torchvision_dataset"]
