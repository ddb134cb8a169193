"""The results CSV: one row per trial, written so that a killed sweep never leaves a torn file.

Every append rewrites the file to a temporary sibling, fsyncs it and renames it over the old one:
a reader (or a sweep resumed after SIGKILL) sees either the file before the row or after it,
never half a row. A lock file keeps two sweeps from writing the same CSV at once.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import functools
import io
import os
import shutil
import sys
import time
from pathlib import Path

from bench.errors import BenchUsageError
from bench.schema import (
    BOUNDARY_FIELDNAMES,
    FIELDNAMES,
    PROBE_FIELDNAMES,
    SCHEMA_VERSION,
    UPGRADE_VALUES,
    fieldnames_at,
)

DISK_FULL_AT = "QLORA_BENCH_DISK_FULL_AT"  # test hook: writing this many rows or more fails ENOSPC


def _simulated_disk_full(rows: int) -> None:
    at = os.environ.get(DISK_FULL_AT)
    if at and rows >= int(at):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _format(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _schema_for(path: Path) -> list[str]:
    """The columns a results file of this name has (trials, boundary probes, boundaries)."""
    stem = Path(path).name.removesuffix(".csv").removesuffix("-cpu")
    return {"boundaries": BOUNDARY_FIELDNAMES, "boundary-trials": PROBE_FIELDNAMES}.get(stem, FIELDNAMES)


def parse_rows(path: Path, text: str, fieldnames: list[str]) -> list[dict]:
    """The rows of a results CSV's text (ending in a whole line) whose header is `fieldnames` at
    some schema version, each row of that version and whole; otherwise a usage error naming the
    file and the line."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    # Schema versions whose columns this header is (older ones are upgraded by ResultsFile).
    readable = {
        str(v) for v in range(1, SCHEMA_VERSION + 1) if fieldnames_at(fieldnames, v) == reader.fieldnames
    }
    if not readable:
        raise BenchUsageError(
            f"{path}, line 1: columns of no schema version this qlora-bench reads (it writes schema "
            f"version {SCHEMA_VERSION}); move it aside or choose another --results-dir"
        )
    rows = []
    for row in reader:
        if None in row or any(v is None for v in row.values()):
            raise BenchUsageError(f"{path}, line {reader.line_num}: malformed row (wrong number of fields)")
        if row["schema_version"] not in readable:
            raise BenchUsageError(
                f"{path}, line {reader.line_num}: schema version {row['schema_version']!r} under a header "
                f"of version {'/'.join(sorted(readable))}; move it aside or repair it"
            )
        rows.append(row)
    return rows


def read_results(path: Path) -> list[dict]:
    """Every row of a results CSV, for reports: strict. An empty file, a torn last line or what
    parse_rows refuses is a usage error naming the file (and the line); a sweep, which can repair a
    torn line by running its trial again, reads with ResultsFile instead."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchUsageError(f"cannot read results file {path}: {exc}") from exc
    if not text:
        raise BenchUsageError(f"{path} is empty (not even a header): move it aside or run its command again")
    if not text.endswith("\n"):
        line = text.count("\n") + 1
        raise BenchUsageError(
            f"{path}, line {line}: torn (the file ends mid-row, a crash while writing it); a rerun of the "
            "command that writes it repairs it, or move the file aside"
        )
    return parse_rows(path, text, _schema_for(path))


class ResultsFile:
    def __init__(
        self, path: Path, fieldnames: list[str] = FIELDNAMES, key: str | tuple[str, ...] = "trial_key"
    ):
        self.path = Path(path)
        self.fieldnames = fieldnames
        self.key = (key,) if isinstance(key, str) else tuple(key)  # the columns that identify a row
        self.torn = ""  # a cut-short last line found on read (not trusted)
        self.rows: list[dict] = self._read() if self.path.exists() else []
        self._lock_fd: int | None = None

    def _read(self) -> list[dict]:
        try:
            with open(self.path, newline="") as f:
                text = f.read()
        except OSError as exc:
            raise BenchUsageError(f"cannot read results file {self.path}: {exc}") from exc
        if not text.strip():
            return []
        self.torn = ""
        if not text.endswith("\n"):  # every write ends its last row: this one was cut short
            text, _, self.torn = text.rpartition("\n")
            text += "\n"
            print(
                f"qlora-bench: {self.path}: the last line is torn (a crash while writing it); "
                f"it is not trusted: ignored, that trial runs again",
                file=sys.stderr,
            )
        rows = parse_rows(self.path, text, self.fieldnames)
        return self._upgrade(rows)

    def _upgrade(self, rows: list[dict]) -> list[dict]:
        """Rows of an older schema: added columns empty (not measured), version made current."""
        added = {
            name: UPGRADE_VALUES.get(name, "")
            for name in self.fieldnames
            if name not in (rows[0] if rows else self.fieldnames)
        }
        return [{**r, **added, "schema_version": str(SCHEMA_VERSION)} for r in rows]

    def keys(self) -> set[str]:
        return {self.key_of(r) for r in self.rows}

    def key_of(self, row: dict):
        """A row's identity: its key column's value (a tuple of them for a composite key)."""
        values = tuple(row[k] for k in self.key)
        return values[0] if len(values) == 1 else values

    def lock(self) -> None:
        """Take the sweep lock on this CSV or refuse, naming the holder."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise BenchUsageError(f"cannot write results to {self.path.parent}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise BenchUsageError(
                f"another sweep (pid {holder}) is writing {self.path}; wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        # Another sweep may have written since this object read the file: read it again, under
        # the lock, so appends never drop its rows.
        self.rows = self._read() if self.path.exists() else []
        if self.torn:  # repair: keep the file as it was beside it, write it back without the torn line
            backup = self.path.with_name(f"{self.path.name}.torn-{int(time.time())}")
            try:
                shutil.copy2(self.path, backup)
            except OSError as exc:
                raise BenchUsageError(f"cannot keep a copy of {self.path} to repair it: {exc}") from exc
            self._write(self.rows)
            print(f"qlora-bench: {self.path} repaired; the file as it was is {backup}", file=sys.stderr)
            self.torn = ""

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def append(self, row: dict, replace_key: bool = False) -> None:
        """Add one row (replacing an earlier row of the same key when asked) atomically. A column
        the schema does not know is a programming error, never silently dropped."""
        unknown = sorted(set(row) - set(self.fieldnames))
        if unknown:
            raise ValueError(f"{self.path}: row has columns the schema does not know: {unknown}")
        row = {name: _format(row.get(name)) for name in self.fieldnames}
        row["schema_version"] = str(SCHEMA_VERSION)
        rows = [r for r in self.rows if not (replace_key and self.key_of(r) == self.key_of(row))]
        rows.append(row)
        self._write(rows)
        self.rows = rows

    def _write(self, rows: list[dict]) -> None:
        try:
            self._write_atomically(rows)
        except OSError as exc:
            raise BenchUsageError(f"cannot write results to {self.path}: {exc}") from exc

    def _write_atomically(self, rows: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.fieldnames, lineterminator="\n")
                writer.writeheader()
                writer.writerows(rows)
                f.flush()
                _simulated_disk_full(len(rows))
                os.fsync(f.fileno())
        except BaseException:  # a full disk, Ctrl-C: the file itself was never touched
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def read_boundaries(path: Path) -> list[dict]:
    """A boundaries CSV's rows (read_results), each with `later_oom`: for an ok boundary, the
    smallest value at or below it (its safe value, where it has one) at which a probe recorded
    after it in the boundary-trials file beside it (the same boundary, under the same cap) ran
    out of memory, else ''. A later search of the same boundary, cut before it recorded one, can
    have met the cap there (the allocator's state near the cap depends on what ran before); the
    tables mark such a value rather than show it as if nothing contradicted it."""
    path = Path(path)
    probes = path.with_name(path.name.replace("boundaries", "boundary-trials", 1))
    ooms: dict[str, list[dict]] = {}  # boundary_key -> its probes that ran out of memory
    for p in read_results(probes) if probes.exists() else []:
        if p["status"] == "oom":
            ooms.setdefault(p["boundary_key"], []).append(p)
    rows = read_results(path)
    for row in rows:
        value, axis = str(row.get("safe_value") or row.get("max_value") or ""), row["axis"]
        found = [
            int(p[axis])
            for p in (ooms.get(row["boundary_key"], []) if row["status"] == "ok" and value else [])
            if p["timestamp_utc"] > row["timestamp_utc"] and p.get("mem_cap_gib") == row.get("mem_cap_gib")
            and str(p.get(axis) or "").isdigit() and int(p[axis]) <= int(value)
        ]  # fmt: skip
        row["later_oom"] = str(min(found)) if found else ""
    return rows


def versions_text(versions: str) -> str:
    """'trl=1.15.0;datasets=4.8.5' (a row's recipe_versions) as words: 'trl 1.15.0, datasets 4.8.5'."""
    return versions.replace("=", " ").replace(";", ", ")


def value_text(row: dict) -> str:
    """An ok boundary's value as the tables write it: '≥' when it fit up to the search limit,
    the safe value first with the largest fit in brackets and '§' when a scan below found an
    OOM (memory is not monotone near the cap), then the band '[low-high]' where it was searched
    (`--band`) and differs from the value, or '[?]' where an emulated boundary has no band yet,
    then '¶N' where a later probe under the same cap ran out of memory at N, at or below the
    value (read_boundaries)."""
    text = row["max_value"]
    if not row["first_oom_value"]:
        text = f"≥{text}"
    if row.get("oom_below"):  # not monotone: the safe value leads
        text = f"{row['safe_value']} ({text}§)"
    band = (str(row.get("band_low") or ""), str(row.get("band_high") or ""))
    if any(band):
        if band != (str(row["max_value"]),) * 2:
            text += f" [{band[0] or '?'}-{band[1] or '?'}]"
    elif str(row.get("emulated")).lower() == "true":  # a card's own boundary has no cap to move
        text += " [?]"
    if row.get("later_oom"):  # read_boundaries: a later probe under the same cap ran out there
        text += f" ¶{row['later_oom']}"
    return text


def variant(row: dict, but: tuple[str, ...] = ()) -> dict[str, str]:
    """A row's added axes (those outside the legacy key: recipe, padding, lengths, evaluation,
    allocator) away from their defaults, less those named in `but`: {} for the measurement the
    main tables publish. Each table, comparison and fit takes one variant, so that an expandable-
    allocator boundary, say, never stands in a default-allocator cell."""
    out = {}
    for name, kind, default in _added_axes():
        text = row.get(name)
        if name in but or text is None or str(text) in ("", "nan"):
            continue
        value = kind(float(text)) if kind is int else str(text)
        if value != (default if kind is int else str(default)):
            out[name] = str(value)
    return out


@functools.cache
def _added_axes() -> tuple[tuple[str, type, object], ...]:
    """(name, type, default) of TrialSpec's fields outside the legacy key, looked up once (variant
    runs per row of every table)."""
    from dataclasses import fields

    from bench.spec import _LEGACY_FIELDS, TrialSpec, field_type

    added = [f for f in fields(TrialSpec) if f.name not in _LEGACY_FIELDS]
    return tuple((f.name, field_type(f.name), f.default) for f in added)


def variant_title(row: dict) -> str:
    """The variant in words, as section titles write it ('recipe loop, allocator expandable');
    '' for the default measurement."""
    return ", ".join(f"{name} {value}" for name, value in variant(row).items())
