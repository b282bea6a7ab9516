"""SIGTERM and Ctrl-C outside the training loop.

Inside :meth:`Trainer.fit <framework.trainer.Trainer.fit>` a stop signal ends the run at the
next step boundary with a checkpoint. Outside it, the handler that :func:`install` sets (first
thing in ``train.py``, before Hydra is imported) decides:

- before training, once the command line is ready for it (:func:`arm`), a signal raises
  :class:`Interrupted` (nothing was trained; the caller removes the empty run folder and exits
  with ``128 + signal``): at the next safe point (:func:`check`, between the stages of building
  a run), or at once inside a long step that may be cut anywhere (:func:`interruptible`:
  reading or downloading a dataset, creating a model), though never inside an import (a
  library half imported, or an exception thrown through C++ code that imports, can crash the
  process or leave it unusable);
- once training starts (:func:`set_training`) it is held: a signal that arrives while ``fit()``
  starts stops the run at its first step, and one that arrives while the run's final files are
  written waits until they are complete, so a finished run keeps status ``completed`` with its
  ``summary.json``, ``lr.png`` and table.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator, Optional

#: The signals handled: SIGTERM (schedulers, ``kill``) and SIGINT (Ctrl-C).
SIGNALS = ("SIGTERM", "SIGINT")
#: The signals a training run stops on at a step boundary (:mod:`framework.trainer.signals`):
#: these and SIGUSR2 (SLURM's warning before a time limit, ``--signal=USR2@<s>``).
RUN_SIGNALS = (*SIGNALS, "SIGUSR2")

#: Seconds after which a signal that could not be raised yet is sent again.
REDELIVER_S = 0.05

_armed = False  # the command line catches Interrupted from here on
_interruptible = 0  # inside interruptible(): a signal is raised where it arrives
_training = False  # from the start of fit() on (or once Interrupted was raised): signals are held
_pending: Optional[str] = None  # a held signal
_deferred: Optional[str] = None  # a signal that could not be raised yet (see check())


class Interrupted(KeyboardInterrupt):
    """A stop signal that arrived before training started (nothing was trained).

    Attributes:
        signal_name: ``SIGTERM`` or ``SIGINT``.
        exit_code: ``128 + signal number`` (143, 130), the shell's convention.
    """

    def __init__(self, signal_name: str = "SIGINT"):
        self.signal_name = signal_name
        self.exit_code = 128 + int(signal.Signals[signal_name])
        super().__init__(f"{signal_name} received")


def _importing(frame: object) -> bool:
    """True when the interrupted code runs inside an ``import`` (importlib's frames on the stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith(("<frozen importlib", "<frozen zipimport")):  # type: ignore[attr-defined]
            return True
        frame = frame.f_back  # type: ignore[attr-defined]
    return False


def _handler(signum: int, frame: object) -> None:
    global _pending, _deferred, _training
    name = signal.Signals(signum).name
    if _training:
        _pending = _pending or name
        return
    if not (_armed and _interruptible) or _importing(frame):  # not safe to raise here: at the next check()
        first = _deferred is None
        _deferred = _deferred or name
        if first and _interruptible:  # (inside a long step, e.g. a download: as soon as its import is done)
            timer = threading.Timer(REDELIVER_S, _redeliver, (signum,))
            timer.daemon = True
            timer.start()
        return
    _deferred, _training = None, True  # raised once; later signals are held while the program ends
    raise Interrupted(name)


def _redeliver(signum: int) -> None:
    """Send a deferred signal again (from a timer thread) until :func:`check` or the handler takes it."""
    global _deferred
    if _deferred is not None and not _training:
        name, _deferred = _deferred, None
        os.kill(os.getpid(), signal.Signals[name])


def check() -> None:
    """A safe point before training: raise a signal that arrived where raising was not safe.

    Raises:
        Interrupted: such a signal is waiting.
    """
    global _deferred, _training
    if _deferred is not None and _armed and not _training:
        name, _deferred, _training = _deferred, None, True
        raise Interrupted(name)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """A long step before training whose code may be stopped anywhere (reading or downloading
    a dataset, creating a model): a signal raises :class:`Interrupted` at once (outside
    imports). Everywhere else before training it waits for the next :func:`check`, so no
    library (Hydra, OmegaConf, torch) is cut off in the middle of changing its own state."""
    global _interruptible
    check()
    _interruptible += 1
    try:
        yield
    finally:
        _interruptible -= 1
    check()


def install() -> None:
    """Handle SIGTERM and SIGINT as described in the module docstring (main thread only; a
    no-op elsewhere, where Python cannot set handlers). Only a program's ``__main__`` calls it."""
    if threading.current_thread() is threading.main_thread():
        for name in SIGNALS:
            signal.signal(signal.Signals[name], _handler)


def ignore() -> None:
    """Ignore SIGTERM and SIGINT from now on (main thread only): the program has written and said
    everything and is exiting. Python resets its own handlers to the default action (death by
    the signal) while the interpreter shuts down, but keeps an ignored signal ignored."""
    if threading.current_thread() is threading.main_thread():
        for name in SIGNALS:
            signal.signal(signal.Signals[name], signal.SIG_IGN)


def arm() -> None:
    """The caller catches :class:`Interrupted` from now on (``train.py``'s command line)."""
    global _armed
    _armed = True


def set_training(training: bool) -> None:
    """``True`` when a run is about to start training: from then on a signal outside the
    trainer's own handling is held (:func:`take_pending`) while the run finishes its files;
    ``False`` when the next run (a sweep's next job) is being prepared.

    Raises:
        Interrupted: with ``True``, a signal that arrived inside an import is waiting (see
            :func:`check`); with ``False``, a signal held since the last run finished or that
            stopped it (:func:`hold`): a sweep stops before its next job.
    """
    global _training
    if training:
        check()
        _training = True
        return
    held = take_pending()
    _training = False
    if held is not None:
        _training = True
        raise Interrupted(held)


def hold(name: str) -> None:
    """Keep the signal ``name`` (taken by the trainer to stop a run) for :func:`set_training`:
    a sweep's next job does not start."""
    global _pending
    _pending = _pending or name


def take_pending() -> Optional[str]:
    """The name of a signal held since :func:`set_training` (cleared), or None."""
    global _pending
    name, _pending = _pending, None
    return name
