"""Helpers shared by the tests: :mod:`tests.helpers.runs` (compose, build, train, run the CLI,
read the outputs) and :mod:`tests.helpers.files` (tiny dataset files in real formats)."""
from tests.helpers.files import (write_cifar10, write_cifar100, write_csv_images, write_imagefolder, write_mnist,
                                 write_torchvision_files)
from tests.helpers.runs import (HANG_GUARD_S, ROOT, TINY, FullDisk, build_run, compose_cfg, folder_bytes,
                                lines, read_csv, run_cli, run_cli_in_process, train_in_process)

__all__ = ["HANG_GUARD_S", "ROOT", "TINY", "FullDisk", "build_run", "compose_cfg", "folder_bytes",
           "lines", "read_csv", "run_cli", "run_cli_in_process", "train_in_process", "write_cifar10",
           "write_cifar100", "write_csv_images", "write_imagefolder", "write_mnist", "write_torchvision_files"]
