"""Run-folder writers: ``steps.csv``, ``epochs.csv``, ``summary.json``, ``lr.png``, git state."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence


class CSVLog:
    """Append rows to a CSV file with a fixed header (written on creation).

    Args:
        path: the CSV file (created or truncated).
        columns: column names, in order; rows are dicts keyed by them (missing keys = empty).
        append: keep an existing file with the same header and append to it (resume).
    """

    def __init__(self, path: str | Path, columns: Sequence[str], append: bool = False):
        self.path, self.columns = Path(path), list(columns)
        if append and self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                old, rows = list(reader.fieldnames or []), list(reader)
            if old == self.columns:
                return
            # columns changed (a resume with other options): keep every row under the union header
            self.columns = old + [c for c in self.columns if c not in old]
            with atomic_file(self.path, newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
                w.writeheader()
                w.writerows(rows)
            return
        with open(self.path, "w", newline="") as f:
            csv.writer(f).writerow(self.columns)

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append ``rows`` and close the file (so a killed run keeps what was written).

        Raises:
            OSError: the write failed (disk full), naming the file; a partly written last row
                is dropped by :func:`truncate_csv` on resume.
        """
        with _named(self.path), open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            for row in rows:
                w.writerow({k: _fmt(v) for k, v in row.items()})


@contextlib.contextmanager
def _named(path: Path) -> Iterator[None]:
    """An ``OSError`` raised inside (a write to an open file has no name) names ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[Any]:
    """Write ``path`` all at once: yield ``<path>.tmp`` opened with ``mode``, then rename it over
    ``path`` (``os.replace``). On any failure (disk full, an exception, Ctrl-C) the temporary
    file is removed and ``path`` keeps its previous content.

    Raises:
        OSError: the write failed, with ``filename`` = ``path``.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with _named(path):
            with open(tmp, mode, **kwargs) as f:
                yield f
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fmt(value: Any) -> Any:
    # repr() of a float round-trips exactly: the CSV holds the applied LR bit for bit.
    return repr(value) if isinstance(value, float) else value


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV file as dicts of strings (empty when there is no file); a row cut by a
    kill (fewer cells than the header) is dropped."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if None not in r.values()]


def write_json(data: dict[str, Any], path: str | Path) -> None:
    """Write ``data`` as indented JSON atomically (temporary file, then rename)."""
    with atomic_file(path) as f:
        f.write(json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object file; ``{}`` when it is missing, unreadable or not an object (being
    written, or its run was killed before writing it)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_summary(folder: str | Path) -> dict[str, Any]:
    """A run folder's ``summary.json`` (:func:`read_json`)."""
    return read_json(Path(folder) / "summary.json")


def git_state(folder: str | Path) -> dict[str, Any]:
    """Commit and dirty flag of the git checkout holding ``folder``.

    Returns:
        ``{"git_commit": sha or None, "git_dirty": bool or None}``; dirty = tracked files
        modified or files neither tracked nor ignored present. None outside a checkout or
        without git.
    """
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain"))  # modified or untracked, not ignored
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": dirty}


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lr(steps: Sequence[int], lrs: dict[str, Sequence[float]], path: str | Path,
            warmup_steps: int = 0, title: str = "", planned: Optional[dict[str, Sequence[float]]] = None) -> None:
    """Save the applied LR of every optimizer step (one line per param group) as a PNG.

    Args:
        steps: step indices ``k``.
        lrs: group name -> applied LR at each of ``steps``.
        path: output PNG.
        warmup_steps: shade steps ``k < warmup_steps``.
        title: figure title (e.g. the schedule name).
        planned: group name -> planned LR of every step ``k = 0 … T-1``, drawn dashed in its
            group's colour (a run early stopping ended); None = none.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    for name, values in lrs.items():
        line, = ax.plot(steps, values, label=name, lw=1.5)
        if planned and name in planned:
            ax.plot(range(len(planned[name])), planned[name], ls="--", lw=1, color=line.get_color(),
                    label=f"{name} (planned)")
    if warmup_steps:
        ax.axvspan(-0.5, warmup_steps - 0.5, color="0.9", label="warmup")
    ax.set_xlabel("optimizer step k")
    ax.set_ylabel("applied LR")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_plan_csv(lrs: dict[str, Sequence[float]], path: str | Path) -> None:
    """Write a planned LR table (:meth:`LRPlan.group_lrs`) as ``lr_plan.csv``: one row per step
    ``k = 0 … T-1`` with ``step``, ``lr`` (the first group) and ``lr/<group>`` for the others,
    as ``steps.csv`` names them and writes them (``repr``: exact), at once and atomically.

    Raises:
        OSError: the write failed (disk full); an earlier file stays as it was.
    """
    names = list(lrs)
    with atomic_file(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "lr", *(f"lr/{n}" for n in names[1:])])
        for k, values in enumerate(zip(*lrs.values())):
            writer.writerow([k, *map(_fmt, values)])


def truncate_csv(path: str | Path, column: str, below: int, write: bool = True) -> list[dict[str, str]]:
    """Keep the rows of a CSV whose integer ``column`` is ``< below`` (atomically); return them.

    Used on resume: rows written after the checkpoint (a run killed between flushes and
    checkpoints) are dropped so the resumed run writes them again, once.

    Args:
        write: False only reads the rows that would be kept (data-parallel ranks other than 0).
    """
    path = Path(path)
    if not path.exists():
        return []
    def keep(row: dict[str, str]) -> bool:
        try:  # a row cut short by a kill has missing fields: drop it
            return None not in row.values() and int(row[column]) < below
        except (TypeError, ValueError, KeyError):
            return False

    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames or [], [r for r in reader if keep(r)]
    if not write:
        return rows
    with atomic_file(path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    return rows
