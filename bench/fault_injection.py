"""Fault injection: SIGKILL training runs and resume them; SIGTERM/SIGINT runs and judge what they say.

    python bench/fault_injection.py --kills 30 --signals 20 --seed 0   # the full figures (about 15-25 min on 2 cores)
    python bench/fault_injection.py --kills 10 --signals 5             # about 4-6 min on 2 cores
    python bench/fault_injection.py --only kill --kills 30
    python bench/fault_injection.py --only signal --signals 20 --work /tmp/fi   # keep the folders there

Part A (``--kills N``): tiny jobs (synthetic 16x16 images, timm ``test_resnet``, CPU) are each run
once without interruption (the reference) and then, in episodes of 1-3 kills, SIGKILLed and
resumed with ``python train.py <same overrides> resume=<run folder>`` (a fresh start into the
same folder while no ``checkpoints/last.pt`` exists yet), until a process runs to its end
(each process's output, with arrival times: ``<episode>/invocations/<i>_{fresh,resume}.stdout``
and ``.stderr``). Kill kinds, in turn:

- ``random``: a uniformly random instant from launch to the job's run length (median of the
  reference and the later uninterrupted processes, as the machine's load changes) (Python
  start-up, imports, build, training, summary/plot/table);
- ``rollback``: the job that diverges and rolls back (``lr0=1e6 trainer.on_divergence=rollback
  trainer.rollback_lr_factor=0.01 trainer.max_rollbacks=3 trainer.log_every_n_steps=2``), killed
  0-20 ms after a ``rollback i/3`` log line appears on the child's output;
- ``checkpoint``: killed 0-10 ms after ``checkpoints/last.pt.tmp`` appears (polled every 1 ms)
  for the 1st-4th time in that process, i.e. while a checkpoint is being written, the first one
  or one that replaces ``last.pt`` (plain or rollback job).

A finished episode's ``steps.csv`` (all columns), ``epochs.csv`` (all but ``time_s``) and
``summary.json`` status are compared with the reference. One line per kill (kind, instant,
step rows on disk, what the next process did), then a table by kind.

Part B (``--signals N``): for SIGTERM and SIGINT each, N runs of a short job (3 epochs of the
tiny job), each sent the signal at a uniformly random instant from launch to the exit (the run
length: median of the reference and of the runs that ended before their instant, which are
drawn again). SIGTERM goes to the process (as ``kill``, docker, a batch system); SIGINT goes to
the process group (as Ctrl-C in a terminal). Each run is put in a bucket by what its output
had shown when the signal left: ``startup`` (no log line yet: Python, imports, Hydra), ``build``
(data/model/optimizer), ``train`` (after the ``T=... optimizer steps`` line), ``finish``
(after the last epoch's line: summary, plot, table) or ``exiting`` (after the program's last
line, ``run folder: ...``: the interpreter is shutting down, and a signal is ignored without a
word, which is right: every file is written and the status said). Recorded: exit status, a Traceback on
stderr, the last stderr lines, the run folder (exists? ``summary.json`` status?
``checkpoints/last.pt``? ``lr.png``?). Judged *untruthful*: a traceback; a message claiming
``stopped``/``stopping`` (or a ``run completed`` table) against another ``summary.json`` status; a
``completed`` summary without ``lr.png``; death by another signal (a crash: SIGABRT,
SIGSEGV); a message naming ``summary.json`` when there is none
(or with another status); a ``continue with ... resume=`` hint without ``checkpoints/last.pt``.
*Debris*: a run folder holding nothing but ``.hydra/`` and ``train.log``. *Ignored*: the run
ran to the end (exit 0, ``completed``) without a line naming the signal.

Every process gets its own ``hydra.run.dir`` under the work folder (default: a new
``/tmp/fault_injection_*``, kept). Exit status 1 when a run differs, a resume fails or a
signalled run is untruthful, leaves debris or hangs.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
TINY = ["dataset=synthetic", "dataset.img_size=16", "dataset.train_size=256", "dataset.val_size=64",
        "model.name=test_resnet", "trainer.progress_bar=false", "device=cpu"]  # 4 steps per epoch
JOBS = {
    "plain": [*TINY, "epochs=4"],  # T = 16
    "rollback": [*TINY, "epochs=3", "lr0=1e6", "trainer.on_divergence=rollback", "trainer.rollback_lr_factor=0.01",
                 "trainer.max_rollbacks=3", "trainer.log_every_n_steps=2"],  # T = 12, 3 rollbacks in epoch 1
    "signal": [*TINY, "epochs=3"],  # T = 12
}
KILL_KINDS = ("random", "rollback", "checkpoint")
TIMEOUT_S = 300.0  # a process running longer is reported as hung and killed
ROLLBACK_LINE = re.compile(r"rollback (\d+)/(\d+):")
LOG_LINE = re.compile(r"^\[[\d\- :,]+\]\[[\w.]+\]\[\w+\] - ")  # Hydra's log format


# ---------------------------------------------------------------------------------------------
# a train.py child process, its output read line by line with arrival times

class Child:
    """``python train.py <overrides> hydra.run.dir=<hydra_dir>``, stdout and stderr read by two
    threads, every line kept with its arrival time (s since launch). ``watch`` (a regex) sets
    ``hit`` at the first matching line."""

    def __init__(self, overrides: list[str], hydra_dir: Path, watch: Optional[re.Pattern] = None,
                 new_session: bool = False):
        self.watch, self.hit, self.hit_at, self.hit_line = watch, threading.Event(), None, ""
        self.out: list[tuple[float, str]] = []
        self.err: list[tuple[float, str]] = []
        env = dict(os.environ, PYTHONUNBUFFERED="1")  # log lines arrive when written, not at exit
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={hydra_dir}"],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     errors="replace", start_new_session=new_session)
        self.threads = [threading.Thread(target=self._read, args=(s, sink), daemon=True)
                        for s, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self.threads:
            t.start()

    def _read(self, stream, sink: list) -> None:
        for line in stream:
            now = self.elapsed()
            sink.append((now, line.rstrip("\n")))
            if self.watch is not None and not self.hit.is_set() and self.watch.search(line):
                self.hit_at, self.hit_line = now, line.strip()
                self.hit.set()

    def save(self, prefix: Path) -> None:
        """Write what the child printed to ``<prefix>.stdout`` and ``<prefix>.stderr``."""
        prefix.parent.mkdir(parents=True, exist_ok=True)
        for name in ("out", "err"):
            lines = "".join(f"{t:8.3f} {line}\n" for t, line in getattr(self, name))
            prefix.with_name(prefix.name + f".std{name}").write_text(lines)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def running(self) -> bool:
        return self.proc.poll() is None

    def sleep_until(self, t: float) -> bool:
        """Sleep until ``t`` s after launch; False when the process exited first."""
        while self.running():
            left = t - self.elapsed()
            if left <= 0:
                return True
            time.sleep(min(left, 0.001))
        return False

    def finish(self, timeout: float = TIMEOUT_S) -> tuple[int, bool]:
        """Wait for the exit: ``(exit status, hung)`` (hung: SIGKILLed after ``timeout`` s)."""
        hung = False
        try:
            self.proc.wait(timeout=max(1.0, timeout - self.elapsed()))
        except subprocess.TimeoutExpired:
            hung = True
            self.proc.kill()
            self.proc.wait()
        for t in self.threads:
            t.join(timeout=10)
        return self.proc.returncode, hung

    def lines(self, which: str = "all") -> list[str]:
        items = {"out": self.out, "err": self.err, "all": sorted(self.out + self.err)}[which]
        return [line for _, line in items]

    def first_at(self, pattern: str, last: bool = False) -> Optional[float]:
        times = [t for t, line in sorted(self.out + self.err) if re.search(pattern, line)]
        return (times[-1] if last else times[0]) if times else None


# ---------------------------------------------------------------------------------------------
# run folders

def read_rows(path: Path, drop: str = "") -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k != drop} for r in csv.DictReader(f)]


def count_rows(path: Path) -> int:
    try:
        return max(0, len([l for l in path.read_text().splitlines() if l.strip()]) - 1)
    except OSError:
        return 0


def read_status(run: Path) -> Optional[str]:
    """``summary.json``'s status; None when there is none, ``<unreadable>`` when it is not JSON."""
    try:
        return json.loads((run / "summary.json").read_text()).get("status")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return "<unreadable>"


def first_line(lines: list[str]) -> str:
    """The first stderr line worth showing (the ``error:`` line, else the exception line)."""
    text = [l.strip() for l in lines if l.strip()]
    for line in text:
        if line.startswith(("error:", "failed", "diverged:", "stopped:")):
            return line[:200]
    tail = [l for l in text if not l.startswith(("File ", "^", "~")) and not LOG_LINE.match(l)]
    return (tail[-1] if tail else text[-1] if text else "")[:200]


def compare(ref: Path, run: Path) -> tuple[bool, str]:
    """steps.csv (all columns), epochs.csv (all but time_s) and the summary status: same as the
    reference? Returns ``(identical, what differs)``."""
    problems = []
    for name, drop in (("steps.csv", ""), ("epochs.csv", "time_s")):
        try:
            a, b = read_rows(ref / name, drop), read_rows(run / name, drop)
        except OSError as exc:
            problems.append(f"{name}: {exc.strerror}")
            continue
        if a != b:
            where = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            cols = sorted(k for k in set(a[where]) | set(b[where]) if a[where].get(k) != b[where].get(k)) \
                if where < min(len(a), len(b)) else []
            problems.append(f"{name}: {len(b)} rows vs {len(a)}, first difference at row {where}"
                            + (f" in {', '.join(cols)}" if cols else ""))
    ref_status, status = read_status(ref), read_status(run)
    if status != ref_status:
        problems.append(f"summary status {status} vs {ref_status}")
    return not problems, "; ".join(problems)


class Durations:
    """Launch-to-exit times (s) of a job's uninterrupted processes; :meth:`estimate` is their
    median. The machine's load changes (2 shared cores), so every process that runs to its end
    on its own adds its time, and the random instants follow the machine's current speed."""

    def __init__(self, first: float):
        self.seen = [first]

    def add(self, seconds: float) -> None:
        self.seen.append(seconds)

    def estimate(self) -> float:
        ordered = sorted(self.seen[-9:])  # the recent ones
        return ordered[len(ordered) // 2]


def run_reference(name: str, folder: Path) -> tuple[Path, float]:
    """The uninterrupted run of job ``name``: its folder and its duration (s, launch to exit)."""
    child = Child(JOBS[name], folder)
    rc, hung = child.finish()
    duration = child.elapsed()
    if rc != 0 or hung:
        sys.exit(f"reference run {name} failed (exit status {rc}{', hung' if hung else ''}): "
                 f"{first_line(child.lines('err'))}\n" + "\n".join(child.lines("err")[-20:]))
    print(f"reference {name}: {duration:.1f} s, {count_rows(folder / 'steps.csv')} steps, "
          f"status {read_status(folder)}  ({folder})", flush=True)
    return folder, duration


# ---------------------------------------------------------------------------------------------
# part A: SIGKILL + resume

def tmp_identity(path: Path) -> Optional[tuple[int, int, int]]:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def arm(child: Child, kind: str, run: Path, rng: random.Random, duration: Durations) -> Optional[str]:
    """Wait for the kill instant of ``kind``, SIGKILL the child; the instant as text, or None
    when the child exited on its own first."""
    if kind == "random":
        at = rng.uniform(0.0, duration.estimate())
        if not child.sleep_until(at):
            return None
        child.proc.kill()
        return f"at {child.elapsed():.2f} s (drawn {at:.2f} s)"
    if kind == "rollback":
        while child.running() and not child.hit.wait(0.05):
            pass
        if not child.hit.is_set():
            return None
        delay = rng.uniform(0.0, 0.020)
        child.sleep_until(child.hit_at + delay)
        if not child.running():
            return None
        child.proc.kill()
        n = ROLLBACK_LINE.search(child.hit_line)
        return (f"{(child.elapsed() - child.hit_at) * 1000:.0f} ms after 'rollback {n.group(1)}/{n.group(2)}' "
                f"(at {child.elapsed():.2f} s)")
    # checkpoint: the (skip+1)-th write of last.pt.tmp by this process, polled every 1 ms; skipping
    # 0-3 writes also hits the writes that replace an existing last.pt, not only the first one
    tmp = run / "checkpoints" / "last.pt.tmp"
    skip = rng.randint(0, 3)
    stale = tmp_identity(tmp)  # a .tmp left by an earlier kill counts once it is rewritten
    present, writes = False, 0
    while child.running():
        now = tmp_identity(tmp)
        if now is None:
            present, stale = False, None
        elif not present and now != stale:
            present, stale, writes = True, None, writes + 1
            if writes > skip:
                seen = child.elapsed()
                child.sleep_until(seen + rng.uniform(0.0, 0.010))
                if not child.running():
                    return None
                child.proc.kill()
                return f"{(child.elapsed() - seen) * 1000:.1f} ms into write {writes} of last.pt.tmp (at {seen:.2f} s)"
        time.sleep(0.001)
    return None


def episode(n: int, kind: str, job: str, attempts: int, ref: Path, duration: Durations, work: Path,
            rng: random.Random) -> dict[str, Any]:
    """Kill job ``job`` up to ``attempts`` times (kind ``kind``), resuming after each, then let it
    finish and compare it with the reference. Prints one line per kill."""
    run = work / f"ep{n:02d}_{kind}_{job}" / "run"
    calls = run.parent / "invocations"
    kills: list[dict[str, Any]] = []
    result: dict[str, Any] = {"kind": kind, "job": job, "kills": kills, "finished": False, "identical": False}
    watch = ROLLBACK_LINE if kind == "rollback" else None
    i = 0
    while True:
        resume = (run / "checkpoints" / "last.pt").is_file()
        overrides = JOBS[job] + ([f"resume={run}"] if resume else [])
        child = Child(overrides, calls / str(i) if resume else run, watch=watch)
        instant = arm(child, kind, run, rng, duration) if len(kills) < attempts else None
        rc, hung = child.finish()
        child.save(calls / f"{i}_{'resume' if resume else 'fresh'}")
        if instant is None and not resume and rc == 0 and not hung:
            duration.add(child.elapsed())
        # what this process did for the previous kill
        loaded = child.first_at(r"resumed at step (\d+)") is not None
        if kills:
            prev = kills[-1]
            if instant is None and rc == 0 and not hung:
                prev["outcome"], prev["ok"] = ("resumed, ran to the end (exit 0)" if resume
                                               else "fresh start, ran to the end (exit 0)"), True
            elif instant is not None:
                started = loaded if resume else child.first_at(r"T=\d+ optimizer steps") is not None
                prev["outcome"] = ((("resumed (" + next(re.search(r"resumed at step \d+", l).group(0)
                                                      for l in child.lines() if "resumed at step" in l) + ")")
                                    if resume else "fresh start, training")
                                   if started else "resume cut before it loaded the checkpoint" if resume
                                   else "fresh start cut before training")
                prev["outcome"] += f", then killed again (kill {len(kills) + 1})"
                prev["ok"] = True if started else None
            else:
                prev["ok"] = False
                prev["outcome"] = (f"{'resume' if resume else 'fresh start'} FAILED exit {rc}"
                                   f"{' (hung)' if hung else ''}: {first_line(child.lines('err'))}")
                prev["stderr"] = child.lines("err")[-15:]
            prev["resume"] = resume
            print_kill(prev)
        if instant is None:
            result["finished"] = rc == 0 and not hung
            if not result["finished"] and not kills:
                result["error"] = f"exit {rc}: {first_line(child.lines('err'))}"
            break
        kills.append({"n": len(kills) + 1, "episode": n, "kind": kind, "job": job, "instant": instant,
                      "was": "resumed" if resume else "fresh",
                      "rows": count_rows(run / "steps.csv"), "last_pt": (run / "checkpoints" / "last.pt").is_file(),
                      "tmp_left": tmp_identity(run / "checkpoints" / "last.pt.tmp"), "status": read_status(run)})
        i += 1
    if result["finished"]:
        result["identical"], result["diff"] = compare(ref, run)
    verdict = ("identical to the reference" if result["identical"] else
               f"DIFFERS: {result['diff']}" if result["finished"] else "did not finish")
    print(f"  episode {n} ({kind}, {job} job, {len(kills)} kill(s)): {verdict}  [{run}]", flush=True)
    return result


def print_kill(k: dict[str, Any]) -> None:
    disk = (f"{k['rows']} step rows, last.pt {'yes' if k['last_pt'] else 'no'}"
            + (f", last.pt.tmp left ({k['tmp_left'][2]} bytes)" if k["tmp_left"] else "") + (f", summary {k['status']}" if k["status"] else ""))
    print(f"kill ep{k['episode']}.{k['n']} {k['kind']:<10} {k['job']:<8} ({k['was']} process) {k['instant']}; "
          f"on disk: {disk} -> {k['outcome']}", flush=True)


def kill_part(args, rng: random.Random, work: Path) -> bool:
    print(f"== part A: {args.kills} SIGKILLs, each followed by a resume ==", flush=True)
    refs = {name: run_reference(name, work / f"reference_{name}") for name in ("plain", "rollback")}
    refs = {name: (folder, Durations(seconds)) for name, (folder, seconds) in refs.items()}
    episodes, done, n = [], 0, 0
    tries = 0
    while done < args.kills and tries < 3 * args.kills + 6:
        kind = KILL_KINDS[n % len(KILL_KINDS)]
        job = "rollback" if kind == "rollback" else rng.choice(["plain", "rollback"])
        attempts = min(rng.randint(1, 3), args.kills - done)
        ref, duration = refs[job]
        ep = episode(n + 1, kind, job, attempts, ref, duration, work, rng)
        episodes.append(ep)
        done += len(ep["kills"])
        n += 1
        tries += 1
    kills = [k for ep in episodes for k in ep["kills"]]
    print("\nkind        kills  resumed ok  restarted ok  cut before loading  FAILED  episodes  identical")
    for kind in (*KILL_KINDS, "all"):
        ks = [k for k in kills if kind in (k["kind"], "all")]
        eps = [e for e in episodes if kind in (e["kind"], "all") and e["kills"]]
        print(f"{kind:<11} {len(ks):>5}  {sum(1 for k in ks if k.get('ok') and k.get('resume')):>10}  "
              f"{sum(1 for k in ks if k.get('ok') and not k.get('resume')):>12}  "
              f"{sum(1 for k in ks if k.get('ok') is None):>18}  {sum(1 for k in ks if k.get('ok') is False):>6}  "
              f"{len(eps):>8}  {sum(1 for e in eps if e['identical']):>9}")
    unkilled = [e for e in episodes if not e["kills"]]
    if unkilled:
        print(f"({len(unkilled)} episode(s) ended before their first kill instant: "
              + ", ".join(f"{e['kind']}/{e['job']}" + (f" {e['error']}" if e.get("error") else "") for e in unkilled) + ")")
    failed = [k for k in kills if k.get("ok") is False]
    for k in failed[:3]:
        print(f"\nfailed resume after kill ep{k['episode']}.{k['n']} ({k['kind']}): stderr tail:\n    "
              + "\n    ".join(k.get("stderr", [])))
    return not failed and all(e["identical"] for e in episodes if e["kills"]) and not any(e.get("error") for e in episodes)


# ---------------------------------------------------------------------------------------------
# part B: SIGTERM / SIGINT at random instants

def bucket(child: Child, sent: float) -> str:
    first_log = child.first_at(LOG_LINE.pattern)
    planned = child.first_at(r"T=\d+ optimizer steps")
    last_epoch = child.first_at(r"epoch (\d+)/\1 ", last=True)
    said_all = child.first_at(r"^run folder: ", last=True)  # the program's last line: it is exiting
    if said_all is not None and sent >= said_all:
        return "exiting"
    if first_log is None or sent < first_log:
        return "startup"
    if planned is None or sent < planned:
        return "build"
    if last_epoch is None or sent < last_epoch:
        return "train"
    return "finish"


def judge(child: Child, run: Path, rc: int, hung: bool, sig: str) -> dict[str, Any]:
    """Exit status, traceback, on-disk state and the untruthful claims of a signalled run."""
    err, everything = child.lines("err"), child.lines("all")
    names = sorted(p.name for p in run.iterdir()) if run.is_dir() else []
    status = read_status(run)
    has = {"summary": (run / "summary.json").is_file(), "last_pt": (run / "checkpoints" / "last.pt").is_file(),
           "lr_png": (run / "lr.png").is_file()}
    problems = []
    if any("Traceback" in l for l in err):
        problems.append("traceback")
    if hung:
        problems.append("hung")
    if rc < 0 and -rc != int(signal.Signals[sig]):
        problems.append(f"crashed ({signal.Signals(-rc).name})")  # e.g. SIGABRT from a native library
    claims_stopped = [l for l in everything if re.search(r"\bstop(ped|ping)\b", l)]
    claims_completed = [l for l in everything if re.search(r"\brun completed\b", l)]
    evidence = []
    if has["summary"] and claims_stopped and status != "stopped":
        problems.append(f"says stopped, summary {status}")
        evidence.append(claims_stopped[0])
    if has["summary"] and claims_completed and status != "completed":
        problems.append(f"table says completed, summary {status}")
        evidence.append(claims_completed[0])
    ignored = status == "completed" and rc == 0 and not any(sig in l for l in everything)
    if status == "completed" and not has["lr_png"]:
        problems.append("completed without lr.png")
    for line in everything:
        if "summary.json" in line:
            said = re.search(r"status:? (\w+)", line)
            if not has["summary"]:
                problems.append("names summary.json, none written")
                evidence.append(line)
            elif said and said.group(1) != status:
                problems.append(f"says status {said.group(1)}, summary {status}")
                evidence.append(line)
            break
    offers = [l for l in everything if re.search(r"continue with|resume=", l)]
    if offers and not has["last_pt"]:
        problems.append("offers resume=, no last.pt")
        evidence.append(offers[0])
    return {"rc": rc, "hung": hung, "traceback": "traceback" in problems, "status": status, **has,
            "exists": run.is_dir(), "names": names, "untruthful": problems, "ignored": ignored,
            "debris": run.is_dir() and set(names) <= {".hydra", "train.log"},
            "tail": [l for l in err if l.strip()][-3:], "stderr": err, "evidence": evidence}


def signal_part(args, rng: random.Random, work: Path) -> bool:
    print(f"\n== part B: SIGTERM and SIGINT, {args.signals} runs each at random instants ==", flush=True)
    ref, seconds = run_reference("signal", work / "reference_signal")
    duration = Durations(seconds)
    ok = True
    examples: dict[str, tuple[str, dict[str, Any]]] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        results = []
        for i in range(args.signals):
            for draw in range(3):  # a run that ends before its instant (the machine got faster) is drawn again
                run = work / f"{sig.name.lower()}_{i:02d}" / str(draw)
                at = rng.uniform(0.0, duration.estimate())
                child = Child(JOBS["signal"], run, new_session=True)
                sent = child.elapsed() if child.sleep_until(at) else None
                if sent is not None:
                    try:
                        if sig == signal.SIGINT:
                            os.killpg(child.proc.pid, sig)  # Ctrl-C: the whole foreground group
                        else:
                            child.proc.send_signal(sig)
                    except ProcessLookupError:
                        sent = None
                rc, hung = child.finish(timeout=sent + 120 if sent is not None else TIMEOUT_S)
                child.save(run)
                if sent is not None:
                    break
                if rc == 0 and not hung:
                    duration.add(child.elapsed())
                print(f"{sig.name} #{i}: exited (status {rc}) at {child.elapsed():.2f} s, before the instant "
                      f"{at:.2f} s; drawn again", flush=True)
            else:
                continue
            r = {**judge(child, run, rc, hung, sig.name), "bucket": bucket(child, sent), "sent": sent, "run": run,
                 "latency": child.elapsed() - sent}
            if r["bucket"] == "exiting":  # everything written and said: ignoring it is the right answer
                r["ignored"] = False
            results.append(r)
            disk = ("no run folder" if not r["exists"] else
                    f"summary {r['status'] or '-'}, last.pt {'yes' if r['last_pt'] else 'no'}, "
                    f"lr.png {'yes' if r['lr_png'] else 'no'}" + (" [DEBRIS: " + " ".join(r["names"]) + "]"
                                                                   if r["debris"] else ""))
            print(f"{sig.name} #{i}: {r['bucket']:<7} at {sent:5.2f} s -> exit {rc}{' HUNG' if hung else ''} "
                  f"after {r['latency']:.2f} s"
                  f"{', Traceback' if r['traceback'] else ''}; {disk}; stderr: "
                  f"{' | '.join(l[:110] for l in r['tail'][-2:]) or '-'}"
                  + (f"  UNTRUTHFUL: {'; '.join(r['untruthful'])}" if r["untruthful"] else "")
                  + ("  IGNORED: ran to the end without a word about the signal" if r["ignored"] else ""), flush=True)
            for problem in r["untruthful"] + (["debris"] if r["debris"] else []) + (["ignored"] if r["ignored"] else []):
                examples.setdefault(f"{sig.name}: {problem}", (f"{sig.name} #{i} in {r['bucket']} at {sent:.2f} s", r))
            ok &= not r["untruthful"] and not r["debris"] and not r["ignored"]
        print(f"\n{sig.name} ({len(results)} runs; run length now {duration.estimate():.1f} s, median)")
        print("bucket    runs  exit codes               tracebacks  untruthful  debris  ignored  summary status")
        for name in ("startup", "build", "train", "finish", "exiting", "all"):
            rs = [r for r in results if name in (r["bucket"], "all")]
            codes = ", ".join(f"{c}x{n}" for c, n in sorted(Counter(r["rc"] for r in rs).items()))
            statuses = ", ".join(f"{s}x{n}" for s, n in sorted(Counter(str(r["status"]) for r in rs).items()))
            print(f"{name:<8} {len(rs):>5}  {codes or '-':<23}  {sum(r['traceback'] for r in rs):>10}  "
                  f"{sum(bool(r['untruthful']) for r in rs):>10}  {sum(r['debris'] for r in rs):>6}  "
                  f"{sum(r['ignored'] for r in rs):>7}  {statuses or '-'}")
        print()
    if examples:
        print("one example per problem:")
        for problem, (where, r) in examples.items():
            print(f"\n- {problem}: {where} (exit {r['rc']}), run folder {r['run']}: "
                  + (" ".join(r["names"]) or "(none)") + f"; summary {r['status']}; last.pt {r['last_pt']}"
                  + "".join(f"\n    said: {l[:200]}" for l in r["evidence"])
                  + "".join(f"\n    stderr: {l[:200]}" for l in [l for l in r["stderr"] if l.strip()][-8:]))
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="\n".join(__doc__.splitlines()[1:6]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=30, help="SIGKILLs to inject in part A (default: %(default)s)")
    parser.add_argument("--signals", type=int, default=20,
                        help="runs per signal (SIGTERM, SIGINT) in part B (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the instants and kinds (default: %(default)s)")
    parser.add_argument("--only", choices=["kill", "signal"], help="run only part A (kill) or part B (signal)")
    parser.add_argument("--work", type=Path, help="folder for the runs (default: a new /tmp/fault_injection_*)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="fault_injection_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"work folder: {work}", flush=True)
    start = time.time()
    ok = True
    if args.only in (None, "kill") and args.kills > 0:
        ok &= kill_part(args, rng, work)
    if args.only in (None, "signal") and args.signals > 0:
        ok &= signal_part(args, rng, work)
    print(f"\n{'all good' if ok else 'PROBLEMS FOUND'} in {time.time() - start:.0f} s; folders in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
