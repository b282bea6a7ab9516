"""The trackers' own process: the training process pickles its trackers into one child Python
process and sends it the rows; the trackers' work (protobuf, SQLite, W&B's client) then never
holds the training process's interpreter lock, and runs at a lower CPU priority.

Protocol (pickled messages over two pipes, :class:`multiprocessing.connection.Connection`):
the parent sends its ``(sys.path, sys.argv, pid)``, ``{name: pickled tracker}``,
``("start", (info, earlier))``, then ``(method, args)`` calls (``log_steps``, ``log_epoch``,
``wait``, ``finish``); the child answers ``("loaded", {name: error})``, ``("started", opened)``
or ``("refused", message)``, ``("waited",)``, ``("finished",)``, and forwards its warnings as
``("log", logger, level, text)``. The child ignores the signals that stop a run (the training
process stops the run, then closes the trackers). When the training process ends without
``finish`` (killed: the pipe's end, or its pid gone), the child makes the calls still in the
pipe, closes the trackers' runs as failed within :data:`FINISH_TIMEOUT_S` and exits.
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

from framework.interrupts import RUN_SIGNALS
from framework.tracking.base import FINISH_TIMEOUT_S, Fanout, RunInfo, Tracker, left_open

log = logging.getLogger(__name__)

#: How much lower the trackers' process runs than the training (``os.nice`` increment): on a
#: machine whose cores all train, the trackers take what the training leaves.
NICE = 10
#: The child's first lines: the training process's ``sys.path`` and ``sys.argv`` (the first
#: message; W&B records the command from ``sys.argv``), then :func:`serve`.
BOOT = ("import sys; from multiprocessing.connection import Connection; "
        "calls = Connection(int(sys.argv[1]), writable=False); replies = int(sys.argv[2]); "
        "sys.path[:], sys.argv[:], parent = calls.recv(); "
        "from framework.tracking.process import serve; serve(calls, replies, parent)")
#: Set in the trackers' process: a run started there (a tracker's module that trains when it is
#: imported) keeps its trackers in a thread, so no process starts another in a chain.
CHILD_ENV = "LRFRAME_TRACKERS_PROCESS"
#: ``summary.json``'s stand-in when the training process ended without closing the trackers.
ORPHANED = {"status": "failed", "error": "the training process ended without closing its trackers"}
#: (s) How often the child checks that the training process still runs, while it waits.
PARENT_CHECK_S = 1.0


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

    Raises:
        RuntimeError: made in a trackers' process (:data:`CHILD_ENV`).
        OSError: the child could not be started (no process or file descriptor left).
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
        except BaseException:
            os.close(calls_w)
            os.close(replies_r)
            raise
        finally:
            os.close(calls_r)
            os.close(replies_w)
        self.calls = Connection(calls_w, readable=False)
        self.replies = Connection(replies_r, writable=False)
        self.calls.send((list(sys.path), list(sys.argv), os.getpid()))  # the child imports what this one imports
        self.calls.send({name: pickle.dumps(tracker) for name, tracker in trackers.items()})
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._feeder: Optional[threading.Thread] = None
        self.alive = True  # False once the child is seen to have ended

    def start(self, info: RunInfo, earlier: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """Open every tracker's run in the child (:meth:`Fanout.start`) and start the feeder.

        Raises:
            ConfigError: the child could not load a tracker (naming it), a tracker could not
                open its run (the child closed those it had opened, and exits), or the child
                ended first.
        """
        from framework.errors import ConfigError

        try:
            errors = self._await("loaded")[1]
            if errors:
                name, error = next(iter(errors.items()))
                raise ConfigError(f"logger.{name}: the trackers' process could not load it ({error}); make its module "
                                  "importable there, or set in_process = True on its class")
            self.calls.send(("start", (info, earlier)))
            reply = self._await("started", "refused")
            if reply[0] == "refused":
                raise ConfigError(reply[1])
        except EOFError as exc:
            self.close()
            raise ConfigError(f"logger={','.join(self.names)}: {exc} before their runs opened; any error it printed "
                              "is above") from None
        except BaseException:
            self.close()
            raise
        self._feeder = threading.Thread(target=self._feed, name="lrframe-trackers-feeder", daemon=True)
        self._feeder.start()
        return reply[1]

    def put(self, item: tuple[str, tuple]) -> None:
        """Queue ``(method, args)`` for the child's trackers; log the warnings it has sent."""
        self._read_logs()
        if not self.ended():
            self._queue.put(item)

    def ended(self) -> bool:
        """Whether the child has ended before :meth:`finish` (killed, out of memory): said once,
        as a warning; nothing more is queued then."""
        if self.alive and self.process.poll() is not None:
            self.alive = False
            log.warning("logger: the trackers' process ended (exit status %s); %s log nothing more for this run, "
                        "and their runs are left as they are (summary.json: trackers_lost)",
                        self.process.returncode, ", ".join(self.names))
        return not self.alive

    def wait(self) -> None:
        """Return once the child has made every call queued so far (or has ended)."""
        self.put(("wait", ()))
        with contextlib.suppress(EOFError):
            if self.alive:
                self._await("waited")

    def finish(self, summary: dict[str, Any]) -> None:
        """The queued calls, then :meth:`Tracker.finish` of each tracker in the child; wait up to
        :data:`FINISH_TIMEOUT_S` in all (a tracker that hangs is left, with a warning)."""
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        self._queue.put(("finish", (summary,)))
        self._queue.put(None)
        try:
            done = not self.alive or self._await("finished", timeout=FINISH_TIMEOUT_S) is not None
        except EOFError as exc:
            log.warning("logger: %s before it closed the runs of %s", exc, ", ".join(self.names))
            done = True
        if not done:
            left_open(self.names)
        # closed runs: the child's interpreter exits by itself (about 1 s of the packages' exit hooks)
        self.close(None if done else max(deadline - time.monotonic(), 0.0))

    def close(self, grace_s: Optional[float] = 10.0) -> None:
        """Close the pipes and reap the child: it ends on its own once it has its calls (a child
        that has not started its trackers' runs ends at once); killed after ``grace_s`` seconds
        (None: not waited for, it is reaped later)."""
        if self._feeder is not None:
            self._queue.put(None)
            self._feeder.join(timeout=1.0)  # a daemon: one stuck in a full pipe is left
        with contextlib.suppress(OSError):
            self.calls.close()
        if grace_s is not None:
            try:
                self.process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._read_logs()
        with contextlib.suppress(OSError):
            self.replies.close()

    # -- helpers ----------------------------------------------------------------------------------

    def _feed(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self.calls.send(item)
            except OSError:  # the child is gone; ended() says so
                return
            except Exception as exc:  # a value that cannot be pickled: say so, go on without it
                log.warning("logger: could not send %s to the trackers' process (%s: %s); it is not logged",
                            item[0], type(exc).__name__, exc)

    def _await(self, *kinds: str, timeout: Optional[float] = None) -> Optional[tuple]:
        """The child's next reply of one of ``kinds`` (its warnings logged on the way); None after
        ``timeout`` seconds.

        Raises:
            EOFError: the child ended first (its message gives the exit status).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if left <= 0:
                return None
            try:
                ready = self.replies.poll(left)
                reply = self.replies.recv() if ready else None
            except (EOFError, OSError):
                raise EOFError(f"the trackers' process ended (exit status {self.process.wait()})") from None
            if reply is not None and reply[0] in kinds:
                return reply
            if reply is not None:
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


class _Forward(logging.Handler):
    """The child's warnings, sent to the parent (which logs them with its own handlers)."""

    def __init__(self, send):
        super().__init__(logging.WARNING)
        self.send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.send(("log", record.name, record.levelno, record.getMessage()))
        except OSError:  # the training process is gone
            pass
        except Exception:
            self.handleError(record)


def load(pickled: dict[str, bytes]) -> tuple[dict[str, Tracker], dict[str, str]]:
    """The trackers unpickled, their packages imported (while the training process builds the
    run; a package that does not import is left for :meth:`Tracker.start` to report), and
    ``{name: error}`` of those that could not be unpickled."""
    from framework.errors import first_line

    trackers, errors = {}, {}
    for name, data in pickled.items():
        try:
            trackers[name] = pickle.loads(data)
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {first_line(exc)}"
            continue
        with contextlib.suppress(Exception):
            importlib.import_module(getattr(trackers[name], "package", "") or "json")
    return trackers, errors


def serve(calls: Connection, replies_fd: int, parent: int) -> None:
    """The child's loop (:data:`BOOT`, started by :class:`ProcessWorker`): load the trackers,
    then make each call the parent sends, in order, until ``finish`` or the parent's end.

    Args:
        calls: the parent's calls (its first message already read); replies_fd: the answers'
            pipe; parent: the training process's pid.
    """
    for name in RUN_SIGNALS:  # they reach the process group: the training process stops the
        if hasattr(signal, name):  # run, then closes the trackers
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    os.nice(NICE)
    replies = Connection(replies_fd, readable=False)
    lock = threading.Lock()

    def send(message: tuple) -> None:
        with lock:
            replies.send(message)

    def receive() -> Any:
        """The next call; EOFError once the training process has ended (a process it forked, a
        DataLoader worker, may hold the pipe open after it)."""
        while not calls.poll(PARENT_CHECK_S):
            if os.getppid() != parent:
                raise EOFError
        return calls.recv()

    forward = _Forward(send)
    logging.getLogger().addHandler(forward)
    fanout: Optional[Fanout] = None
    try:
        trackers, errors = load(calls.recv())
        send(("loaded", errors))
        if errors:
            return
        while True:
            method, args = receive()
            if method == "start":
                fanout = Fanout(trackers)
                try:
                    opened = fanout.start(*args)
                except Exception as exc:  # Fanout.start closed the runs it had opened
                    fanout = None
                    send(("refused", str(exc)))
                    return
                send(("started", opened))
            elif method == "wait":
                send(("waited",))
            elif method == "finish":
                fanout.call("finish", args)
                send(("finished",))
                return
            else:
                fanout.call(method, args)
    except (EOFError, OSError):  # the training process ended without finish (killed): close the runs
        if fanout is not None:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # an orphan that hangs can be stopped,
            timer = threading.Timer(FINISH_TIMEOUT_S, os._exit, (1,))  # and ends by itself
            timer.daemon = True
            timer.start()
            fanout.call("finish", (ORPHANED,))
    finally:
        logging.getLogger().removeHandler(forward)
        with lock, contextlib.suppress(OSError):
            replies.close()
