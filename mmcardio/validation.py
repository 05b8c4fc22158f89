"""`validate_manifest`: every problem of a manifest, its rows and the files they point to.

The row rules are `study.checked_rows`, the ones every manifest reader applies; this adds what
only a full check does: that each file exists and that its reader decodes it.
"""
from __future__ import annotations

import os
from pathlib import Path

from mmcardio.datasets.readers.limits import exists
from mmcardio.errors import ManifestError, ReaderError
from mmcardio.study import Problem, checked_rows, read_rows

#: How a problem begins when a reader failed with something other than an MMCardioError: a
#: bug in the reader (the fuzzer counts these), listed rather than raised.
READER_FAILED = "the reader failed"


def validate_manifest(path: str | Path, read_files: bool = True, progress: bool = False,
                      workers: int | None = None, data_root: str | Path | None = None) -> list[Problem]:
    """Every problem of every row and file, without stopping at the first (by row). Files are
    decoded by `workers` processes (default: one per CPU). data_root: as `read_manifest`'s."""
    path = Path(path)
    try:
        rows = read_rows(path)
        checked = list(checked_rows(rows, path, data_root))
    except ManifestError as err:
        return [Problem(None, err.field, err.path or str(path), err.problem)]
    problems: list[Problem] = []
    to_read: list[tuple[int, str, Path, dict[str, str]]] = []
    for i, study, row_problems in checked:
        problems += row_problems
        refused = {p.file for p in row_problems}  # e.g. outside the data root: not opened
        for column, file in study.files() if study else []:
            if str(file) in refused:
                continue
            missing = _missing(file)
            if missing:
                problems.append(Problem(i, column, str(file)[:300], missing))
            elif read_files:
                to_read.append((i, column, file, study.ecg_lead_map))
    problems += _unreadable(to_read, workers, progress)
    return sorted(problems, key=lambda p: -1 if p.row is None else p.row)


def _missing(file: Path) -> str:
    """Why `file` cannot be read ("" when it exists): absent, or a name the system refuses."""
    try:
        return "" if exists(file) else "file does not exist"
    except ReaderError as err:  # e.g. a name longer than the file system allows
        return err.problem


def _unreadable(files: list[tuple[int, str, Path, dict[str, str]]], workers: int | None,
                progress: bool) -> list[Problem]:
    """A problem for each (row, column, file, ECG lead map) its reader refuses."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    workers = min(workers or os.cpu_count() or 1, max(len(files), 1))
    jobs = [(column, file, lead_map) for _, column, file, lead_map in files]
    bar = {"total": len(files), "desc": "validate", "unit": "file", "disable": not progress}
    if workers <= 1:
        errors = list(tqdm(map(read_error, jobs), **bar))
    else:
        # spawned, not forked: a fork copies locks other threads hold (torch, tqdm's monitor),
        # and a worker then waited for ever inside pydicom (seen in the test suite)
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            errors = list(tqdm(pool.map(read_error, jobs, chunksize=4), **bar))
    return [Problem(i, column, str(file), error) for (i, column, file, _), error in zip(files, errors) if error]


def read_error(job: tuple[str, Path, dict[str, str]]) -> str | None:
    """None if the file decodes, else why not. Every reader failure is a problem to list,
    also one without a message (a MemoryError has none)."""
    from mmcardio.datasets.readers import read_for_column  # readers import numpy-heavy libs
    from mmcardio.errors import MMCardioError

    column, file, lead_map = job
    try:
        read_for_column(column, file, lead_map)
    except MMCardioError as err:
        return err.problem
    except Exception as err:  # noqa: BLE001 - listed, not raised
        return f"{READER_FAILED}: {type(err).__name__}" + (f": {err}" if str(err) else "")
    return None
