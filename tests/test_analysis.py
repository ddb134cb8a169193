"""plot and compare on the committed results, as a user runs them from a fresh clone (no GPU)."""

import csv
from pathlib import Path

from conftest import REPO, cli

RESULTS = REPO / "results"


def test_plot_makes_the_figures_from_the_csvs_alone(tmp_path):
    result = cli("plot", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    made = sorted(Path(p).name for p in result.stdout.split())
    expected = ["boundaries-recipes.png", "boundaries.png", "memory.png"]  # no speed under a card's name
    if list(RESULTS.glob("sft/*/curves.csv")):  # a published SFT run: its format-success curve
        expected.append("format_success.png")
    assert made == sorted(expected)
    for name in made:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_with_nothing_to_plot_is_a_usage_error(tmp_path):
    result = cli("plot", "--results-dir", str(tmp_path))
    assert result.returncode == 2 and "no GPU result rows to plot" in result.stderr


def test_compare_shows_the_measured_boundaries_side_by_side():
    result = cli("compare", "t4", "l4", "--model", "qwen2.5-7b", env={"COLUMNS": "160"})
    assert result.returncode == 0, result.stderr
    with open(RESULTS / "l4" / "boundaries.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["model"] == "qwen2.5-7b" and r["lora_rank"] == "8"]
    seq = next(
        r for r in rows if r["axis"] == "seq_len" and r["dtype"] == "bf16" and r["grad_ckpt"] == "true"
    )
    batch = next(
        r
        for r in rows
        if r["axis"] == "batch_size"
        and r["seq_len"] == "1024"
        and r["dtype"] == "bf16"
        and r["grad_ckpt"] == "true"
    )
    line = next(li for li in result.stdout.splitlines() if "qwen2.5-7b" in li and "bf16, ckpt" in li)
    assert "n/a (no bf16)" in line  # the T4 has no bf16
    assert f"{seq['max_value']} / {batch['max_value']} / ~" in line  # then projected tokens/s
    assert "PROJECTED" in result.stdout and "not measured on the card" in result.stdout
    # and how far each training stack gets on each card (the purchase summary's table)
    from analysis.compare import compare

    stacks = compare(["t4", "l4"], RESULTS, ["qwen2.5-7b"], 1024)["stacks"]
    (t4,) = [line["t4"] for line in stacks if line["setting"] == "fp16, ckpt, r16"]
    summary = (RESULTS / "purchase.md").read_text()
    row = next(li for li in summary.splitlines() if li.startswith("| t4 | qwen2.5-7b | fp16, ckpt, r16 |"))
    header = next(li for li in summary.splitlines() if li.startswith("| profile | model | setting | peft |"))
    recipes, cells = ([c.strip() for c in line.split("|")[4:-1]] for line in (header, row))
    expected = [f"{r} {v}" for r, v in zip(recipes, cells, strict=True) if v]
    assert t4 == " · ".join(expected) and t4.startswith("peft 1792 [1664-1920] · loop ")


def test_format_success_curves_are_drawn_when_present(tmp_path):
    run = tmp_path / "sft" / "qwen-run"
    run.mkdir(parents=True)
    (run / "curves.csv").write_text("step,format_success\n0,0.1\n50,0.6\n100,0.95\n")
    result = cli("plot", "--results-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "figures" / "format_success.png").exists()


def test_compare_refuses_unknown_or_unmeasured_profiles():
    unknown = cli("compare", "t4", "rtx9090")
    assert unknown.returncode == 2 and "unknown profile 'rtx9090'" in unknown.stderr
    unmeasured = cli("compare", "a100-40gb", "h100-sxm")
    assert unmeasured.returncode == 2 and "qlora-bench boundary --profile a100-40gb" in unmeasured.stderr
    one = cli("compare", "t4")
    assert one.returncode == 2 and "two or more" in one.stderr


def test_the_issues_example_3060_against_4060ti_answers_from_measured_boundaries():
    """The 16 GB card fits what the 12 GB one does not: Qwen2.5-7B with checkpointing at 1024
    tokens and batch 2 (measured on the H200, emulated; results/rtx*/boundaries.csv)."""
    result = cli("compare", "rtx3060-12gb", "rtx4060ti-16gb", "--model", "qwen2.5-7b")
    assert result.returncode == 0, result.stderr
    line = next(li for li in result.stdout.splitlines() if "qwen2.5-7b" in li and "fp16, ckpt" in li)
    cells = [c.strip() for c in line.split("│")[3:5]]
    assert cells[0].startswith("960 / 0") and cells[1].startswith("2688 / 2 / ~"), cells


def test_readme_worked_example_is_what_compare_prints():
    result = cli("compare", "rtx3050-laptop", "t4", "--model", "qwen2.5-1.5b", env={"COLUMNS": "160"})
    assert result.returncode == 0, result.stderr
    readme = (RESULTS.parent / "README.md").read_text()
    first = result.stdout.split("└")[0]  # the boundary table (the stacks' table follows it)
    rows = [line for line in first.splitlines() if line.startswith("│ qwen2.5-1.5b")]
    assert len(rows) == 4 and all(row in readme for row in rows[:3]), rows


def test_compare_does_not_rank_cards_whose_bands_overlap():
    result = cli("compare", "t4", "l4", "--model", "qwen2.5-1.5b", env={"COLUMNS": "400"})
    assert result.returncode == 0, result.stderr
    assert "Not ranked" in result.stdout and "l4 ~ t4" in result.stdout


def test_the_purchase_summary_counts_on_the_safe_value():
    import pandas as pd

    from analysis.summary import _best_setting, _tokens

    rows = pd.DataFrame(
        [  # the longest fit is 2112, but 1920 ran out of memory below it: 1856 is safe
            {
                "model": "m",
                "lora_rank": 8,
                "dtype": "fp16",
                "grad_ckpt": True,
                "max_value": 2112,
                "safe_value": 1856,
            },
            {
                "model": "m",
                "lora_rank": 8,
                "dtype": "bf16",
                "grad_ckpt": True,
                "max_value": 1920,
                "safe_value": None,
            },
        ]
    )
    best = _best_setting(rows).iloc[0]
    assert best["dtype"] == "bf16" and _tokens(best) == "1920"
    assert _tokens(_best_setting(rows.iloc[:1]).iloc[0]) == "1856 (2112§)"


def test_a_boundary_diff_line_names_the_recipe_and_the_other_later_axes():
    """Two boundaries that differ only by recipe or allocator are told apart; a peft row at the
    later axes' defaults reads as it always did (the published diffs quote such lines)."""
    from analysis.boundary_diff import _name

    row = {
        "axis": "seq_len",
        "model": "qwen2.5-0.5b",
        "lora_rank": "16",
        "dtype": "fp16",
        "grad_ckpt": "true",
    }
    row.update(
        seq_len="", recipe="peft", padding="none", allocator="default", lengths="", eval_batch_size="0"
    )
    here = Path("results/t4/boundaries.csv")
    assert _name(here, row) == "t4 seq_len qwen2.5-0.5b r16 fp16 ckpt=true seq=-"
    assert _name(here, {**row, "recipe": "", "allocator": ""}) == _name(here, row)  # older schemas
    as_written = {**row, "lengths": "fixed", "eval_new_tokens": "0"}  # a schema-9 row's columns
    assert _name(here, as_written) == _name(here, row)
    assert _name(here, {**row, "recipe": "unsloth", "allocator": "expandable"}).endswith(
        "seq=- recipe=unsloth allocator=expandable"
    )
