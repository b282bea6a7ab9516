"""Stop signals of a training run: SIGTERM, SIGINT and SIGUSR2 end it at a step boundary."""
from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Callable, Optional

from framework import distributed
from framework.trainer.ema import monitored

log = logging.getLogger("framework.trainer.loop")

#: Stop requests ranked for the data-parallel agreement (the strongest wins on every rank).
STOP_SIGNALS = {1: "SIGINT", 2: "SIGTERM", 3: "SIGUSR2"}
STOP_CODES = {name: code for code, name in STOP_SIGNALS.items()}


class StopSignals:
    """Turns SIGTERM, SIGUSR2 (submitit's warning before a SLURM time limit) and a first Ctrl-C
    into a stop request the trainer acts on at its next step boundary; a second Ctrl-C
    interrupts at once (``KeyboardInterrupt``).

    Args:
        world_size: processes of the run; with more than one, :meth:`should_stop` is a vote.

    Attributes:
        request: name of the signal asking for a stop (``SIGTERM``, ...), None while none came.
        late: a stop signal that arrived after the last step (the run completes); None otherwise.
    """

    def __init__(self, world_size: int = 1):
        self.world_size = world_size
        self.request: Optional[str] = None
        self.late: Optional[str] = None
        self._previous: dict[str, Any] = {}  # handler in place before catch(), by signal name

    def catch(self, finished: Callable[[], bool]) -> Callable[[], None]:
        """Install the handlers (main thread only) and take a signal held while the program was
        starting (:func:`framework.interrupts.take_pending`) as a request for the first step.

        Args:
            finished: True once no optimizer step is left; a signal then only marks :attr:`late`.

        Returns:
            The undo: puts the previous handlers back.
        """
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handle(signum: int, frame: Any) -> None:
            name = signal.Signals(signum).name
            if finished():  # nothing left to stop: the run finishes its files
                self.late = self.late or name
                return
            if self.request is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: stop now
            self.request = name
            log.warning("%s received: stopping after this step with a resumable checkpoint", name)

        from framework.interrupts import RUN_SIGNALS, take_pending

        signals = [getattr(signal, name) for name in RUN_SIGNALS if hasattr(signal, name)]
        previous = {sig: signal.signal(sig, handle) for sig in signals}
        early = take_pending()  # a signal held while fit() was starting: stop at the first step
        if early is not None and self.request is None:
            handle(signal.Signals[early], None)
        self._previous = {signal.Signals(sig).name: h for sig, h in previous.items()}
        return lambda: [signal.signal(sig, handler) for sig, handler in previous.items()]

    def should_stop(self) -> bool:
        """Whether a stop signal asks every rank to stop at this step boundary.

        In a data-parallel run the ranks decide together from one host-side all-reduce per
        step: the strongest request on any rank (SIGUSR2 > SIGTERM > SIGINT) stops every rank at
        this step with that reason (a rank keeps a stronger one of its own that arrived after
        its vote), so rank 0 hands SIGUSR2 on to submitit. A signal that arrives on some rank
        after the all-reduce stays pending there until the next step. Every rank must call it
        at every step boundary (it is a collective).
        """
        if self.world_size == 1:
            return self.request is not None
        own = STOP_CODES.get(self.request, 0)
        code = distributed.max_over_ranks(own)
        if code:  # a stronger signal of this rank's own (it came after its vote) is kept
            self.request = STOP_SIGNALS[max(code, own)]
        return bool(code)

    def settle(self, stopped: Optional[str]) -> None:
        """At the end of ``fit``: a request the run did not stop for (it came with the last
        step) becomes :attr:`late`."""
        if self.request is not None and not stopped:
            self.late = self.late or self.request

    def forward(self, stopped: Optional[str]) -> None:
        """After a run stopped on SIGUSR2 (``stopped``) has written its checkpoint and summary,
        hand the signal to the handler that was there before (submitit's, which requeues the
        SLURM job)."""
        handler = self._previous.get(stopped or "")
        if stopped == "SIGUSR2" and callable(handler):
            handler(signal.SIGUSR2, None)


class EarlyStops:
    """How :class:`~framework.trainer.Trainer` ends before step ``T`` on request (a mixin: it
    uses the trainer's ``signals``, ``stopped``, ``run_state``, ``stop_after_steps``, ``trial``,
    ``pruned``, ``monitor`` and ``mode``): stop signals, ``stop_after_steps`` and a search
    trial's pruner (:mod:`framework.search`)."""

    @property
    def late_signal(self) -> Optional[str]:
        """A stop signal that arrived after the last step (the run completed), or None."""
        return self.signals.late

    def forward_stop_signal(self) -> None:
        """After a run stopped on SIGUSR2 has written its checkpoint and summary, hand the signal
        to the handler that was there before (submitit's, which requeues the SLURM job)."""
        self.signals.forward(self.stopped)

    def _pruned(self, epoch: int, metrics: dict[str, Any]) -> bool:
        """Tell the search's trial a validated epoch (its checkpoint saved); True when its pruner
        stops the run (rank 0 decides, every rank follows)."""
        value = monitored(metrics, self.monitor, self.mode)[0]
        self._asked += 1  # a key per question: an epoch validated again after a rollback asks anew
        decided = distributed.rank_zero_value(f"pruned/{self._asked}",
                                              lambda: str(int(self.trial.should_prune(epoch, metrics, value))))
        if decided == "1":
            self.pruned = {"epoch": epoch, "step": self.run_state.global_step,
                           **(self.trial.report() if self.is_main else {})}
            log.info("pruned after epoch %d by the search (step %d)", epoch + 1, self.run_state.global_step)
        return self.pruned is not None

    def _should_stop(self) -> bool:
        """A stop signal (voted on by every rank: :meth:`StopSignals.should_stop`) or
        ``stop_after_steps`` reached."""
        stop = self.signals.should_stop()  # first: every rank takes part in the vote at every step
        return stop or (self.stop_after_steps is not None and self.run_state.global_step >= self.stop_after_steps)
