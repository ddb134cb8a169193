"""Weights & Biases mirror of the CSVs: one W&B run per trial or boundary row as it is written
(its configuration as the run config, its measurements as metrics), grouped by profile, and a
run per sweep holding a W&B Table of the rows it wrote.

The CSV is the record; W&B is a copy made after the row is on disk. Offline by default (no
account: run directories under <results>/wandb/, `wandb sync <dir>` later); online when asked
and a key is set. Any W&B failure (not installed, no key, unreachable, a full disk) is said once
on stderr and turns W&B off for the rest of the command: it never costs a row or stops a sweep.
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

from bench.schema import ENVIRONMENT_COLUMNS, IDENTITY_COLUMNS
from bench.spec import FIELD_NAMES

MODES = ("offline", "online", "off")
PROJECT = "qlora-bench"
INIT_TIMEOUT_S = 30

# The columns that say what ran (the run config); every other non-empty column is a measurement.
CONFIG_COLUMNS = frozenset((*FIELD_NAMES, *ENVIRONMENT_COLUMNS, *IDENTITY_COLUMNS))


def _number(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class WandbMirror:
    """Mirror rows to W&B; `mode` off (or any failure) makes every call a no-op."""

    def __init__(self, mode: str, results_dir: Path, profile: str, kind: str):
        if mode not in MODES:
            raise ValueError(f"W&B mode {mode!r}: choose from {', '.join(MODES)}")
        self.mode, self.kind, self.profile = mode, kind, profile
        self.dir = Path(results_dir)
        self.rows: list[dict] = []
        self.wandb = None
        self.failed: str | None = None
        if mode != "off":
            self._guard("import", self._import)

    def _import(self) -> None:
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.wandb = wandb

    def _guard(self, what: str, fn, *args) -> None:
        if self.failed is not None or (what != "import" and self.wandb is None):
            return
        try:
            fn(*args)
        except Exception as exc:  # W&B must never stop a sweep or cost a row
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            self.failed = f"{what} failed: {type(exc).__name__}: {first}"
            print(f"qlora-bench: W&B {self.failed}; rows go to the CSV only from here on", file=sys.stderr)

    def _init(self, name: str, job_type: str, config: dict):
        self.dir.mkdir(parents=True, exist_ok=True)
        return self.wandb.init(
            project=os.environ.get("WANDB_PROJECT", PROJECT),
            mode=self.mode,
            dir=str(self.dir),
            group=self.profile,
            job_type=job_type,
            name=name,
            config=config,
            reinit="create_new",
            settings=self.wandb.Settings(silent=True, init_timeout=INIT_TIMEOUT_S, console="off"),
        )

    def log_row(self, row: dict, name: str) -> None:
        """One run for this row: config = what ran, metrics = what was measured."""
        self.rows.append(row)
        self._guard("log", self._log_row, row, name)

    def _log_row(self, row: dict, name: str) -> None:
        config = {k: row[k] for k in CONFIG_COLUMNS if row.get(k) not in (None, "")}
        run = self._init(name, self.kind, config)
        try:
            metrics = {}
            for key, value in row.items():
                if key in CONFIG_COLUMNS or value in (None, ""):
                    continue
                number = _number(value)
                if number is not None:
                    metrics[key] = number
                else:
                    run.summary[key] = value if isinstance(value, str) else str(value)
            run.log(metrics)
        finally:
            run.finish()

    def finish(self, fieldnames: list[str]) -> None:
        """The sweep-level run: a W&B Table of every row this command wrote."""
        if self.rows:
            self._guard("table", self._table, fieldnames)

    def _table(self, fieldnames: list[str]) -> None:
        from bench.results import _format

        run = self._init(f"{self.profile}-{self.kind}s", f"{self.kind}-table", {"profile": self.profile})
        try:
            data = [[_format(r.get(c)) for c in fieldnames] for r in self.rows]
            run.log({f"{self.kind}s": self.wandb.Table(columns=list(fieldnames), data=data)})
        finally:
            run.finish()


# Reading offline run files back (tests, and anyone checking what W&B holds before a sync).
# A .wandb file is a LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB
# blocks of records, each a 7-byte header (crc32, length, type) and a piece of a protobuf Record.
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B transaction log")
    records, pos, parts = [], 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0:
            break
        parts += data[pos : pos + length]
        pos += length
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
    return records


def read_offline_run(run_dir: Path) -> dict:
    """{name, group, job_type, config, metrics (last logged value of each), summary, tables}"""
    import json

    (log,) = Path(run_dir).glob("run-*.wandb")
    out = {"config": {}, "metrics": {}, "summary": {}, "tables": {}}
    for record in read_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.update(name=record.run.display_name, group=record.run.run_group, job_type=record.run.job_type)
            out["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    out["metrics"][key] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:
                key = item.key or "/".join(item.nested_key)
                out["summary"][key] = json.loads(item.value_json)
    for table in Path(run_dir).glob("files/media/table/**/*.table.json"):
        content = json.loads(table.read_text())
        out["tables"][table.name.split("_")[0]] = content
    config = out["config"]
    out["config"] = {k: v.get("value", v) if isinstance(v, dict) else v for k, v in config.items()}
    return out
