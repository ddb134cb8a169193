"""The fit predictor (issue 23): its published coefficients and accuracy regenerate from the
CSVs, its leave-out accuracy meets the targets, and `qlora-bench predict` answers from them."""

from __future__ import annotations

from conftest import REPO, cli

RESULTS = REPO / "results"


def test_predictor_regenerates_and_meets_its_leave_out_targets():
    from analysis import predict

    for path, text in predict.texts(RESULTS).items():
        assert text == path.read_text(), path
    acc = predict.accuracy(predict.leave_out(predict.load_rows(RESULTS)))
    assert acc["median_error"] <= 0.05 and acc["agreement_away_from_cap"] >= 0.97, acc
    assert acc["points_away_from_cap"] > 1000
    readme = " ".join((REPO / "README.md").read_text().split())
    quoted = (
        f"off by {100 * acc['median_error']:.1f} % (median; 90th percentile {100 * acc['p90_error']:.1f} %)"
        f" and its fit/OOM call agrees with the run {100 * acc['agreement_away_from_cap']:.1f} % of the time"
    )
    assert quoted in readme, quoted  # the README quotes the table as it is


def test_a_group_measured_at_one_rank_leaves_the_rank_out_and_says_so():
    import json

    groups = json.loads((RESULTS / "predictor.json").read_text())["groups"]
    single = [g for g in groups if len(g["ranks"]) == 1]
    assert single and all(g["coef"][1] == 0 for g in single)  # no slope from a single rank
    result = cli(
        "predict", "--profile", "rtx3070", "--model", "llama-3.2-1b", "--seq-len", "2048", "--rank", "8",
        "--recipe", "liger",
    )  # fmt: skip
    assert result.returncode == 0 and "measured at LoRA rank 16 only" in result.stdout, result.stdout


def test_predict_answers_fits_or_not_and_shows_the_measured_boundary():
    result = cli("predict", "--profile", "t4", "--model", "llama-3.2-3b", "--seq-len", "2048", "--rank", "16")
    assert result.returncode == 0, result.stderr
    assert "fits" in result.stdout and "predicted, not measured" in result.stdout
    assert "longest sequence at batch 1 is 4544 tokens" in result.stdout  # results/t4/boundaries.csv
    long = cli("predict", "--profile", "t4", "--model", "llama-3.2-3b", "--seq-len", "8192", "--rank", "16")
    assert long.returncode == 0 and "does not fit" in long.stdout


def test_predict_refuses_what_it_cannot_answer(tmp_path):
    bf16 = cli("predict", "--profile", "t4", "--model", "qwen2.5-7b", "--seq-len", "512", "--dtype", "bf16")
    assert bf16.returncode == 2 and "no bf16" in bf16.stderr
    unknown = cli("predict", "--profile", "t4", "--model", "gpt-9", "--seq-len", "512")
    assert unknown.returncode == 2 and "unknown 'gpt-9'" in unknown.stderr
    unmeasured = cli("predict", "--profile", "t4", "--model", "tinyllama-1.1b", "--seq-len", "512")
    assert unmeasured.returncode == 2 and "no measurements" in unmeasured.stderr
    empty = cli(
        "predict",
        "--profile",
        "t4",
        "--model",
        "qwen2.5-7b",
        "--seq-len",
        "512",
        "--results-dir",
        str(tmp_path),
    )
    assert empty.returncode == 2 and "predictor.json" in empty.stderr and "Traceback" not in empty.stderr
