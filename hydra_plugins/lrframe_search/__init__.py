"""The ``lr_search`` Hydra sweeper of lrframe (Hydra loads plugins from ``hydra_plugins`` only);
the implementation is :mod:`framework.search.sweeper`."""
from framework.search.sweeper import LRSearchSweeperImpl


class LRSearchSweeper(LRSearchSweeperImpl):
    """``hydra/sweeper=lr_search``: :class:`framework.search.sweeper.LRSearchSweeperImpl`."""


__all__ = ["LRSearchSweeper"]
