"""The trackers' own process: the training process pickles its trackers into one child Python
process and sends it the rows; the trackers' work (protobuf, SQLite, W&B's client) then never
holds the training process's interpreter lock, and runs at a lower CPU priority.

Protocol (pickled messages over two pipes, :class:`multiprocessing.connection.Connection`):
the parent sends its ``sys.path``, the pickled trackers, ``("start", (info, earlier))``,
then ``(method, args)`` calls (``log_steps``, ``log_epoch``, ``wait``, ``finish``); the child
answers ``("loaded", error)``, ``("started", opened)`` or ``("refused", message)``,
``("waited",)``, ``("finished",)``, and forwards its warnings as ``("log", logger, level, text)``.
When the parent ends without ``finish`` (killed), the child reads the rows still in the pipe,
closes the trackers' runs as failed and exits.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Optional

from framework.tracking.base import FINISH_TIMEOUT_S, Fanout, RunInfo, Tracker

log = logging.getLogger(__name__)

#: How much lower the trackers' process runs than the training (``os.nice`` increment): on a
#: machine whose cores all train, the trackers take what the training leaves.
NICE = 10
#: The child's first lines: this process's ``sys.path`` (the first message), then :func:`serve`.
BOOT = ("import sys; from multiprocessing.connection import Connection; "
        "calls = Connection(int(sys.argv[1]), writable=False); sys.path[:] = calls.recv(); "
        "from framework.tracking.process import serve; serve(calls, int(sys.argv[2]))")
#: Set in the trackers' process: a run started there (a tracker's module that trains when it is
#: imported) keeps its trackers in a thread, so no process starts another in a chain.
CHILD_ENV = "LRFRAME_TRACKERS_PROCESS"
#: ``summary.json``'s stand-in when the training process ended without closing the trackers.
ORPHANED = {"status": "failed", "error": "the training process ended without closing its trackers"}


def runs_in_process(tracker: Tracker) -> bool:
    """Whether ``tracker`` runs in the training process (a thread) rather than in the trackers'
    process: its class sets ``in_process``, is defined in ``__main__`` (which the child does not
    run), the tracker cannot be pickled, the system is not POSIX (the pipes are handed to the
    child as file descriptors), or this is a trackers' process itself (:data:`CHILD_ENV`)."""
    if (os.name != "posix" or os.environ.get(CHILD_ENV) or getattr(tracker, "in_process", False)
            or type(tracker).__module__ == "__main__"):
        return True
    try:
        pickle.dumps(tracker)
    except Exception:
        return True
    return False


class ProcessWorker:
    """The parent's end of the trackers' process.

    The child starts (and imports the trackers' modules) when this is made; :meth:`start` waits
    for it to open every tracker's run. :meth:`put` only queues a call (a feeder thread writes it
    to the pipe, so the training never waits on a full pipe); the child's warnings are logged
    here as they arrive (read at each :meth:`put`, :meth:`wait` and :meth:`finish`).

    Args:
        trackers: name -> tracker (picklable; :func:`runs_in_process` is False for each).
    """

    def __init__(self, trackers: dict[str, Tracker]):
        if os.environ.get(CHILD_ENV):
            raise RuntimeError("a trackers' process does not start another (a tracker's module that starts one when "
                               "it is imported?)")
        self.names = list(trackers)
        calls_r, calls_w = os.pipe()
        replies_r, replies_w = os.pipe()
        try:
            self.process = subprocess.Popen([sys.executable, "-c", BOOT, str(calls_r), str(replies_w)],
                                            pass_fds=(calls_r, replies_w), stdin=subprocess.DEVNULL,
                                            env={**os.environ, "OMP_NUM_THREADS": "1", CHILD_ENV: "1"})
        finally:
            os.close(calls_r)
            os.close(replies_w)
        self.calls = Connection(calls_w, readable=False)
        self.replies = Connection(replies_r, writable=False)
        self.calls.send(list(sys.path))  # the child imports what this process imports
        self.calls.send_bytes(pickle.dumps(trackers))
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._feeder: Optional[threading.Thread] = None
        self.alive = True  # False once the child is seen to have ended

    def start(self, info: RunInfo, earlier: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """Open every tracker's run in the child (:meth:`Fanout.start`) and start the feeder.

        Raises:
            ConfigError: the child could not load a tracker, or a tracker could not open its
                run (the child closed those it had opened, and exits).
        """
        from framework.errors import ConfigError

        try:
            error = self._await("loaded")[1]
            if error is not None:
                raise ConfigError(f"logger={','.join(self.names)}: the trackers' process could not load them "
                                  f"({error}); make their module importable, or set in_process = True on the class")
            self.calls.send(("start", (info, earlier)))
            reply = self._await("started", "refused")
            if reply[0] == "refused":
                raise ConfigError(reply[1])
        except EOFError as exc:
            self._close()
            raise ConfigError(f"logger={','.join(self.names)}: {exc} before its trackers opened their runs; "
                              "its error is printed above") from None
        except BaseException:
            self._close()
            raise
        self._feeder = threading.Thread(target=self._feed, name="lrframe-trackers-feeder", daemon=True)
        self._feeder.start()
        return reply[1]

    def put(self, item: tuple[str, tuple]) -> None:
        """Queue ``(method, args)`` for the child's trackers; log the warnings it has sent (and,
        once, that it has ended, after which nothing more is queued)."""
        self._read_logs()
        if self.alive and self.process.poll() is not None:
            self.alive = False
            log.warning("logger: the trackers' process ended (exit status %s); %s log nothing more for this run",
                        self.process.returncode, ", ".join(self.names))
        if self.alive:
            self._queue.put(item)

    def wait(self) -> None:
        """Return once the child has made every call queued so far (or has ended)."""
        self.put(("wait", ()))
        with contextlib.suppress(EOFError):
            if self.alive:
                self._await("waited")

    def finish(self, summary: dict[str, Any]) -> None:
        """The queued calls, then :meth:`Tracker.finish` of each tracker in the child; wait up to
        :data:`FINISH_TIMEOUT_S` for it (a tracker that hangs is left, with a warning)."""
        self._queue.put(("finish", (summary,)))
        self._queue.put(None)
        try:
            done = not self.alive or self._await("finished", timeout=FINISH_TIMEOUT_S) is not None
        except EOFError as exc:
            log.warning("logger: %s before it closed the runs of %s", exc, ", ".join(self.names))
            done = True
        if not done:
            log.warning("logger: the trackers did not take the run's last rows within %d s (%s); their runs are "
                        "left open, the run folder has every value", FINISH_TIMEOUT_S, ", ".join(self.names))
        self._close()

    # -- helpers ----------------------------------------------------------------------------------

    def _feed(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self.calls.send(item)
            except OSError:  # the child is gone; finish() says so
                return

    def _await(self, *kinds: str, timeout: Optional[float] = None) -> Optional[tuple]:
        """The child's next reply of one of ``kinds`` (its warnings logged on the way); None after
        ``timeout`` seconds.

        Raises:
            EOFError: the child ended first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if left <= 0:
                return None
            if self.replies.poll(left):
                reply = self.replies.recv()
                if reply[0] in kinds:
                    return reply
                self._log(reply)
            elif self.process.poll() is not None and not self.replies.poll(0):
                raise EOFError(f"the trackers' process ended (exit status {self.process.returncode})")

    def _read_logs(self) -> None:
        try:
            while self.replies.poll(0):
                self._log(self.replies.recv())
        except (EOFError, OSError):
            pass

    @staticmethod
    def _log(reply: tuple) -> None:
        if reply[0] == "log":
            logging.getLogger(reply[1]).log(reply[2], "%s", reply[3])

    def _close(self) -> None:
        """Close the pipes and wait for the child (killed when it does not end)."""
        if self._feeder is not None:
            self._queue.put(None)
            self._feeder.join(timeout=FINISH_TIMEOUT_S)
        self.calls.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._read_logs()
        self.replies.close()


class _Forward(logging.Handler):
    """The child's warnings, sent to the parent (which logs them with its own handlers)."""

    def __init__(self, send):
        super().__init__(logging.WARNING)
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.send(("log", record.name, record.levelno, record.getMessage()))
        except Exception:
            self.handleError(record)


def serve(calls: Connection, replies_fd: int) -> None:
    """The child's loop (:data:`BOOT`, started by :class:`ProcessWorker`): load the trackers,
    then make each call the parent sends, in order, until ``finish`` or the parent's end.

    Args:
        calls: the parent's calls (its ``sys.path`` already read); replies_fd: the answers' pipe.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and SIGTERM reach the process group:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the training process stops the run and closes the trackers
    os.nice(NICE)
    replies = Connection(replies_fd, readable=False)
    lock = threading.Lock()

    def send(message: tuple) -> None:
        with lock:
            replies.send(message)

    logging.getLogger().addHandler(_Forward(send))
    fanout: Optional[Fanout] = None
    started = False
    try:
        try:
            fanout = Fanout(pickle.loads(calls.recv_bytes()))
            for tracker in fanout.trackers.values():  # their packages, while the training process builds the run
                with contextlib.suppress(Exception):  # start() reports a package that does not import
                    importlib.import_module(getattr(tracker, "package", "") or "json")
            send(("loaded", None))
        except Exception as exc:
            from framework.errors import first_line

            send(("loaded", f"{type(exc).__name__}: {first_line(exc)}"))
            return
        while True:
            method, args = calls.recv()
            if method == "start":
                try:
                    send(("started", fanout.start(*args)))
                    started = True
                except Exception as exc:  # Fanout.start closed the runs it had opened
                    send(("refused", str(exc)))
                    return
            elif method == "wait":
                send(("waited",))
            elif method == "finish":
                fanout.call("finish", args)
                send(("finished",))
                return
            else:
                fanout.call(method, args)
    except EOFError:  # the training process ended without finish (killed): close the runs
        if started and fanout is not None:
            fanout.call("finish", (ORPHANED,))
    except BrokenPipeError:  # it ended while this process answered: nobody to tell
        pass
    finally:
        with lock, contextlib.suppress(OSError):
            replies.close()
