"""A declarative, Hydra-configured PyTorch training framework whose subject is the learning rate.

Importing the package is cheap (no torch); modules that need torch import it themselves.
"""
