"""The LR range test (Smith 2015/2017, as fastai's ``lr_find`` and Lightning's ``Tuner.lr_find``):
``rules`` (probe LRs, smoothing, suggestions), ``finder`` (the test over a built trainer, its
result and files) and ``auto`` (``mode=lr_find`` and ``lr0=auto``, imported by the run, not here).

Config files name the test as ``framework.lr_finder.LRFinder``.
"""
from framework.lr_finder.finder import LRFinder, ProbeSchedule, RangeTestResult, answer, write_outputs
from framework.lr_finder.rules import (MIN_FALL, MIN_POINTS, SUGGESTIONS, probe_lrs, search_window, smooth, suggest_all,
                                       suggest_minimum, suggest_steepest, suggest_valley)

__all__ = ["LRFinder", "ProbeSchedule", "RangeTestResult", "answer", "write_outputs", "MIN_FALL", "MIN_POINTS",
           "SUGGESTIONS", "probe_lrs", "search_window", "smooth", "suggest_all", "suggest_minimum",
           "suggest_steepest", "suggest_valley"]
