"""Many pairs at once: ``python -m regcore register-many PAIRS.csv --out DIR``.

``PAIRS.csv`` has a header with the columns ``source`` and ``target`` and, optionally,
``source_labels`` and ``target_labels`` (a cell may be empty); relative paths are relative to the
CSV's folder. Row ``n`` (1 is the first row under the header) is registered into ``DIR/<n>/``
(``warped.png``, ``flow.npy``, ``metrics.json``, and ``warped_labels.png`` with source labels),
and ``DIR/summary.csv`` gets one line per row: scores, Dice when labels are given, time, and the
error of a row that failed.

- **Bad rows are skipped, never fatal**: a missing or unreadable file, a label map of the wrong
  size (anything that fails for one row) is reported in ``summary.csv`` and the other rows go on.
- **Resuming**: a row whose folder holds a ``metrics.json`` for the same input files (and slice),
  method and model is done and skipped, so re-running after an interruption, or after adding rows, registers only
  what is missing. ``metrics.json`` is written last and renamed into place, so a folder with one
  is complete. Rows that failed are tried again.
- **Batched network passes**: rows are read ``batch_size`` at a time; when the method starts from
  the network (``net``, ``net+refine``), the pairs of a batch that have the same working size go
  through the network in one batched pass, and the rest of each method (polish, optimisation) runs
  per pair. Each pair's ``time_s`` includes its share of the batched pass. On a CPU the batched
  pass is cheaper per pair with ONNX Runtime, but the per-pair work dominates, so end to end it
  gains little (``python -m benchmarks.many``: ``benchmarks/results/many.md``).
- **Several processes or machines**: under ``torchrun`` (``WORLD_SIZE`` > 1) the pending rows are
  sharded across the ranks with ``torch.distributed`` (gloo backend, CPU): rank 0 lists the rows
  still to do and broadcasts the list, rank ``r`` takes rows ``r, r + W, r + 2W, ...`` of it (as
  ``DistributedSampler`` does, without padding), every rank writes its rows' folders, and the
  outcomes are gathered on rank 0, which writes ``summary.csv``. All ranks must see ``DIR``
  (one machine, or a shared file system).
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor
from tqdm import tqdm

from .api import Inputs, RegistrationResult, finish, load_inputs
from .errors import RegcoreError
from .pipeline import METHODS, Choice, Options, Work, choose_method, net_start, network_start, prepare
from .volumes import Slicing

__all__ = ["COLUMNS", "SUMMARY_COLUMNS", "Report", "Row", "read_pairs", "register_many"]

#: The CSV's columns: the first two are required.
COLUMNS = ("source", "target", "source_labels", "target_labels")
#: summary.csv's columns, in order.
SUMMARY_COLUMNS = (
    "row",
    *COLUMNS,
    "status",
    "method",
    "time_s",
    "mse_before",
    "mse_after",
    "ncc_before",
    "ncc_after",
    "local_ncc_before",
    "local_ncc_after",
    "folding_percent",
    "mean_displacement_px",
    "mean_displacement_mm",
    "dice_before",
    "dice_after",
    "error",
)
#: Initial fields that work on a batch of pairs as on one (``Work`` with ``N`` pairs stacked).
BATCHED_STARTS = (network_start, net_start)
#: How long ranks wait for each other at the final gather (the slowest shard's extra time).
GATHER_TIMEOUT = timedelta(hours=12)


@dataclass(frozen=True)
class Row:
    """One CSV row: its number (1 = first under the header) and its files (None: empty cell)."""

    number: int
    files: dict[str, Path | None]

    def expected_inputs(self) -> dict[str, str]:
        """The file names ``metrics.json`` records for this row (:func:`regcore.api.load_inputs`)."""
        return {key: os.fspath(path) for key, path in self.files.items() if path is not None}


@dataclass
class Report:
    """What :func:`register_many` did: rows registered now, skipped (done earlier) and failed (all
    ranks together), the wall time of the registration loop (from after the model is loaded to the
    gathered outcomes: process start-up and model loading excluded), the number of processes, this
    process's rank, and summary.csv's path (written by rank 0)."""

    registered: int
    skipped: int
    failed: int
    elapsed_s: float
    processes: int
    rank: int
    summary: Path

    @property
    def pairs_per_s(self) -> float:
        return self.registered / self.elapsed_s if self.elapsed_s > 0 else 0.0


def read_pairs(path: str | os.PathLike) -> list[Row]:
    """The rows of a pairs CSV (see the module docstring); a RegcoreError if the file cannot be used."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [name for name in COLUMNS[:2] if name not in header]
            if missing:
                raise RegcoreError(f"{path}: the CSV needs the columns source and target (header: {', '.join(header) or 'none'})")
            rows = []
            for number, record in enumerate(reader, start=1):
                cells = {(key or "").strip(): (value or "").strip() for key, value in record.items() if isinstance(value, str)}
                files = {name: (path.parent / cells[name]) if cells.get(name) else None for name in COLUMNS}
                rows.append(Row(number, files))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise RegcoreError(f"{path}: cannot read the pairs CSV ({err})") from None
    return rows


def _done(folder: Path, row: Row, slicing: Slicing, choice: Choice) -> bool:
    """Whether ``folder`` holds a complete result for ``row``'s files (and ``slicing``, for medical
    files) by the method and model of ``choice``."""
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
        inputs, method, model = metrics["inputs"], metrics["method"], metrics["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    expected = row.expected_inputs() | ({"slice": str(slicing)} if isinstance(inputs, dict) and "slice" in inputs else {})
    return inputs == expected and (method, model) == (choice.method, choice.model)


def _summary_line(row: Row, metrics: dict | None, status: str, error: str = "") -> dict[str, object]:
    line: dict[str, object] = {"row": row.number, **{k: "" if v is None else os.fspath(v) for k, v in row.files.items()}}
    line |= {"status": status, "error": error}
    if metrics is not None:
        before, after, shift, dice = metrics["before"], metrics["after"], metrics["displacement"], metrics.get("dice")
        line |= {"method": metrics["method"], "time_s": metrics["time_s"], "folding_percent": after["folding_percent"]}
        for when, scores in (("before", before), ("after", after)):
            line |= {f"{key}_{when}": scores[key] for key in ("mse", "ncc", "local_ncc")}
        line |= {"mean_displacement_px": shift["mean_px"], "mean_displacement_mm": shift.get("mean_mm", "")}
        if dice:
            line |= {"dice_before": dice["before"]["mean"], "dice_after": dice["after"]["mean"]}
    return line


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if isinstance(err, RegcoreError) and text else f"{type(err).__name__}: {text[0] if text else ''}"


class _Batch:
    """Registers rows ``batch_size`` at a time; outcomes go to ``self.outcomes`` (row number -> error or "")."""

    def __init__(self, out: Path, options: Options, choice: Choice, run_notes: list[str], slicing: Slicing) -> None:
        self.out, self.options, self.choice, self.run_notes, self.slicing = out, options, choice, run_notes, slicing
        self.method = METHODS[choice.method]
        self.outcomes: dict[int, str] = {}

    def run(self, rows: list[Row]) -> None:
        prepared = []
        for row in rows:
            try:
                prepared.append((row, *self._prepare(row)))
            except Exception as err:  # a bad row is reported, never fatal
                self.outcomes[row.number] = _one_line(err)
        for (row, inputs, work), start in zip(prepared, self._starts([w for _, _, w in prepared]), strict=True):
            try:
                if isinstance(start, Exception):
                    raise start
                flow, shared_s = start
                began = time.perf_counter()
                self._save(row, finish(inputs, work, self.choice, self.method.refine(work, flow), began, shared_s))
                self.outcomes[row.number] = ""
            except Exception as err:
                self.outcomes[row.number] = _one_line(err)

    def _prepare(self, row: Row) -> tuple[Inputs, Work]:
        for key in COLUMNS[:2]:
            if row.files[key] is None:
                raise RegcoreError(f"the {key} cell is empty")
        notes = list(self.run_notes)
        files = row.files
        inputs = load_inputs(files["source"], files["target"], files["source_labels"], files["target_labels"], self.slicing, notes)
        return inputs, prepare(inputs.source, inputs.target, self.options, self.choice, notes, time.perf_counter())

    def _starts(self, works: list[Work]) -> list[tuple[Tensor | None, float] | Exception]:
        """Each work's initial field and the seconds it cost that pair, or the exception it raised.

        Where the method's start can take a batch, the works of one working size go through it in
        one pass, and each pays an equal share of its time.
        """
        starts: list = [None] * len(works)
        groups: dict[tuple, list[int]] = {}
        for i, work in enumerate(works):
            groups.setdefault((work.size, work.source.device), []).append(i)
        for members in groups.values() if self.method.start in BATCHED_STARTS else ():
            if len(members) < 2:
                continue
            began = time.perf_counter()
            stacked = [works[i] for i in members]
            try:
                flows = self.method.start(
                    replace(stacked[0], source=torch.cat([w.source for w in stacked]), target=torch.cat([w.target for w in stacked]))
                )
            except Exception:  # the pairs are tried one by one below, each with its own outcome
                continue
            share = (time.perf_counter() - began) / len(members)
            for k, i in enumerate(members):
                starts[i] = (flows[k : k + 1], share)
        for i, work in enumerate(works):
            if starts[i] is None:
                began = time.perf_counter()
                try:
                    starts[i] = (self.method.start(work), time.perf_counter() - began)
                except Exception as err:
                    starts[i] = err
        return starts

    def _save(self, row: Row, result: RegistrationResult) -> None:
        folder = self.out / str(row.number)
        (folder / "metrics.json").unlink(missing_ok=True)  # the folder is incomplete until the new one is written
        (folder / "warped_labels.png").unlink(missing_ok=True)
        try:
            result.save(folder)
        except OSError as err:
            raise RegcoreError(f"cannot write to {folder}: {err.strerror or err}") from None


def _world() -> tuple[int, int, bool]:
    """(rank, world size, whether this call started the process group): under torchrun, gloo."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=GATHER_TIMEOUT)
        return dist.get_rank(), dist.get_world_size(), True
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    return 0, 1, False


def register_many(
    pairs: str | os.PathLike,
    out: str | os.PathLike,
    *,
    batch_size: int = 8,
    slice_axis: str = "z",
    slice_index: int | None = None,
    progress: bool = True,
    **options,
) -> Report:
    """Register every pair of the CSV ``pairs`` into ``out`` (see the module docstring).

    Args:
        pairs: the CSV (``source,target[,source_labels,target_labels]``).
        out: the output folder: ``out/<row>/`` per row and ``out/summary.csv``.
        batch_size: rows read and registered together (the network's batch); at least 1.
        slice_axis, slice_index: the slice of 3-D volumes, as for :func:`regcore.register`.
        progress: show a tqdm progress bar (one per rank) on stderr.
        options: :func:`regcore.register`'s registration options (``method``, ``model``,
            ``refine_steps``, ``similarity``, ``device``, ...).

    Returns:
        A :class:`Report` (on every rank; ``registered``/``failed`` count all ranks' rows).

    Raises:
        RegcoreError: the CSV, an option or the checkpoint cannot be used (a row's own problem
        is reported in ``summary.csv`` instead).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RegcoreError(f"batch size must be a whole number >= 1, got {batch_size!r}")
    out = Path(out)
    rows = read_pairs(pairs)
    slicing = Slicing(slice_axis, slice_index)
    opts = Options(**options)
    run_notes: list[str] = []
    choice = choose_method(opts, run_notes)
    rank, world, started = _world()
    try:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RegcoreError(f"cannot create {out}: {err.strerror or err}") from None
        pending = [row.number for row in rows if not _done(out / str(row.number), row, slicing, choice)] if rank == 0 else []
        if world > 1:  # one list for all ranks: a rank still scanning must not see another's new results
            box = [pending]
            dist.broadcast_object_list(box, src=0)
            pending = box[0]
        by_number = {row.number: row for row in rows}
        mine = [by_number[n] for n in pending[rank::world]]
        began = time.perf_counter()
        batch = _Batch(out, opts, choice, run_notes, slicing)
        with tqdm(total=len(mine), desc=f"rank {rank}" if world > 1 else "pairs", unit="pair", position=rank, disable=not progress) as bar:
            for i in range(0, len(mine), batch_size):
                chunk = mine[i : i + batch_size]
                batch.run(chunk)
                bar.update(len(chunk))
        outcomes = batch.outcomes
        if world > 1:
            gathered: list[dict[int, str]] = [{} for _ in range(world)]
            dist.all_gather_object(gathered, outcomes)
            outcomes = {number: error for part in gathered for number, error in part.items()}
        elapsed = time.perf_counter() - began
        summary = out / "summary.csv"
        if rank == 0:
            _write_summary(summary, rows, out, outcomes)
        failed = sum(1 for error in outcomes.values() if error)
        return Report(len(outcomes) - failed, len(rows) - len(pending), failed, elapsed, world, rank, summary)
    finally:
        if started:
            dist.destroy_process_group()


def _write_summary(path: Path, rows: list[Row], out: Path, outcomes: dict[int, str]) -> None:
    """summary.csv: every row, from its folder's metrics.json (registered now or earlier) or its error."""
    lines = []
    for row in rows:
        if outcomes.get(row.number):
            lines.append(_summary_line(row, None, "error", outcomes[row.number]))
            continue
        try:
            metrics = json.loads((out / str(row.number) / "metrics.json").read_text())
        except (OSError, ValueError):
            lines.append(_summary_line(row, None, "error", "no result (metrics.json missing)"))
            continue
        lines.append(_summary_line(row, metrics, "registered" if row.number in outcomes else "done earlier"))
    partial = path.with_suffix(".csv.part")
    with partial.open("w", newline="") as f:
        writer = csv.DictWriter(f, SUMMARY_COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(lines)
    partial.replace(path)
