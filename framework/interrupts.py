"""SIGTERM and Ctrl-C outside the training loop.

Inside :meth:`Trainer.fit <framework.trainer.Trainer.fit>` a stop signal ends the run at the
next step boundary with a checkpoint. Outside it, :func:`install` (called by the command line
before Hydra composes anything) decides: before training a signal raises :class:`Interrupted`
(nothing was trained; the caller removes the empty run folder and exits with ``128 + signal``);
once training starts (:func:`set_training`) it is held: a signal that arrives while ``fit()``
starts stops the run at its first step, and one that arrives while the run's final files are
written waits until they are complete, so a finished run keeps status ``completed`` with its
``summary.json``, ``lr.png`` and table.
"""
from __future__ import annotations

import signal
import threading
from typing import Callable, Optional

#: The signals handled: SIGTERM (schedulers, ``kill``) and SIGINT (Ctrl-C).
SIGNALS = ("SIGTERM", "SIGINT")

_training = False  # from the start of fit() on: signals are held, never raised
_pending: Optional[str] = None


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


def _handler(signum: int, frame: object) -> None:
    global _pending
    name = signal.Signals(signum).name
    if _training:
        _pending = _pending or name
        return
    raise Interrupted(name)


def install() -> Callable[[], None]:
    """Handle SIGTERM and SIGINT as described in the module docstring (main thread only; a
    no-op elsewhere, where Python cannot set handlers).

    Returns:
        A function that puts the previous handlers back.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {name: signal.signal(signal.Signals[name], _handler) for name in SIGNALS}
    return lambda: [signal.signal(signal.Signals[name], handler) for name, handler in previous.items()]


def set_training(training: bool) -> None:
    """``True`` when a run is about to start training: from then on a signal outside the
    trainer's own handling is held (:func:`take_pending`) while the run finishes its files;
    ``False`` when the next run (a sweep's next job) is being prepared.

    Raises:
        Interrupted: with ``False``, a signal held since the last run finished (a sweep stops
            before its next job).
    """
    global _training
    held = take_pending() if not training else None
    _training = training
    if held is not None:
        raise Interrupted(held)


def take_pending() -> Optional[str]:
    """The name of a signal held since :func:`set_training` (cleared), or None."""
    global _pending
    name, _pending = _pending, None
    return name
