"""`qlora-bench estimate` on the committed results: the fastest measured setting that fits."""

from pathlib import Path

from click.testing import CliRunner

from analysis.estimate import estimate
from bench.cli import main

RESULTS = Path(__file__).resolve().parents[1] / "results"


def run(*args):
    return CliRunner().invoke(main, ["estimate", "--results-dir", str(RESULTS), *args])


def test_estimate_picks_the_fastest_fitting_setting():
    answer = estimate("t4", "llama-3.2-3b", 5000, 512, 2, RESULTS)
    options = answer["options"]
    assert options and [o["hours"] for o in options] == sorted(o["hours"] for o in options)
    for o in options:  # each from a measured boundary that holds the job's length and batch
        assert "seq_len boundary" in o["source"] and o["steps"] == -(-5000 // o["batch"]) * 2
        assert o["low"] < o["hours"] < o["high"]
    result = run("--profile", "t4", "--model", "llama-3.2-3b", "--examples", "5000", "--tokens", "512",
                 "--epochs", "2")  # fmt: skip
    assert result.exit_code == 0 and "PROJECTED" in result.output and "fastest" in result.output


def test_estimate_says_when_nothing_fits():
    result = run("--profile", "gtx1650", "--model", "qwen2.5-3b", "--examples", "10", "--tokens", "512")
    assert result.exit_code == 0 and "does not fit" in result.output
    # ... and which measured recipes do train it: the hand-written loop reaches 512, band 384-640
    trains = "measured to train it at batch 1 with: loop (fp16, ckpt, r8): 512 [384-640] tokens"
    assert trains in result.output
    assert "step time is not projected" in result.output
    answer = estimate("gtx1650", "qwen2.5-1.5b", 10, 1024, 1, RESULTS)  # liger's safe value counts
    assert answer["others"] == [
        "liger (fp16, ckpt, r16): 1856 (2112§) [1664-2176] tokens",
        "unsloth (fp16, ckpt, r16): 9152 (9280§) [7552-10944] tokens",
    ]
    result = run("--profile", "gtx1650", "--model", "qwen2.5-3b", "--examples", "10", "--tokens", "576")
    assert "nor with another recipe measured" in result.output


def test_estimate_refuses_what_it_cannot_answer():
    for args, words in (
        (("--profile", "t4", "--model", "gpt-9"), "unknown 'gpt-9'"),
        (("--profile", "a100-40gb", "--model", "qwen2.5-7b"), "no measured boundaries"),
        (("--profile", "t4", "--model", "qwen2.5-7b", "--recipe", "liger"), "only"),
    ):
        result = run(*args, "--examples", "10", "--tokens", "512")
        assert result.exit_code == 2 and words in result.output, result.output


def test_readme_quotes_the_estimate():
    from analysis.estimate import _hours

    best = estimate("t4", "llama-3.2-3b", 5000, 512, 2, RESULTS)["options"][0]
    readme = " ".join((RESULTS.parent / "README.md").read_text().split())
    setting = (
        f"{best['dtype']} {'with' if best['grad_ckpt'] else 'without'} checkpointing at batch {best['batch']}"
    )
    quote = f"~{_hours(best['hours'])} (band {_hours(best['low'])}-{_hours(best['high'])})"
    assert setting in readme and quote in readme, (setting, quote)
