"""W&B for real, offline (no mock, no account): the run files hold the rows the CSV holds, and a
W&B that cannot work costs no row and does not stop the sweep."""

import pytest
from conftest import cli, read_rows

from bench.results import _format
from bench.wblog import CONFIG_COLUMNS, read_offline_run

pytestmark = pytest.mark.slow

SWEEP = [
    "--profile",
    "t4",
    "--device",
    "cpu",
    "--seq-lens",
    "64,128",
    "--batch-sizes",
    "1",
    "--ranks",
    "4",
    "--dtypes",
    "fp16,bf16",
    "--grad-ckpt",
    "off",
]


def _same(logged, written: str) -> bool:
    """A W&B value against the CSV's text of it."""
    if isinstance(logged, bool):
        return _format(logged) == written
    if isinstance(logged, (int, float)):
        return abs(logged - float(written)) <= 1e-9 * max(1.0, abs(logged))
    return str(logged) == written


def test_offline_runs_hold_every_csv_row(tmp_path):
    result = cli(*SWEEP, "--results-dir", str(tmp_path))  # W&B offline is the default
    assert result.returncode == 0, result.stderr
    rows = {r["trial_key"]: r for r in read_rows(tmp_path / "t4" / "trials-cpu.csv")}
    assert len(rows) == 4 and {r["status"] for r in rows.values()} == {"ok", "unsupported"}
    runs = [read_offline_run(d) for d in sorted((tmp_path / "wandb").glob("offline-run-*"))]
    trials = {r["config"]["trial_key"]: r for r in runs if r["job_type"] == "trial"}
    assert trials.keys() == rows.keys()  # one run per row, no more, no fewer
    for key, run in trials.items():
        row = rows[key]
        assert run["group"] == "t4" and run["name"] == key
        for column, value in {**run["config"], **run["metrics"]}.items():
            if column in row:
                assert _same(value, row[column]), (column, value, row[column])
        assert run["summary"]["status"] == row["status"]
        if row["status"] == "ok":  # the measurements are metrics, not config
            assert {"loss_last", "step_time_p50_s", "tokens_per_s"} <= run["metrics"].keys()
            assert not CONFIG_COLUMNS & run["metrics"].keys()
    (table,) = [r for r in runs if r["job_type"] == "trial-table"]
    data = table["tables"]["trials"]
    assert sorted(map(tuple, data["data"])) == sorted(
        tuple(r[c] for c in data["columns"]) for r in rows.values()
    )


def test_wandb_off_writes_no_run_files(tmp_path):
    result = cli(
        *SWEEP, "--seq-lens", "64", "--dtypes", "bf16", "--wandb", "off", "--results-dir", str(tmp_path)
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "wandb").exists()
