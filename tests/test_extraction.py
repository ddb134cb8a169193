"""The JSON-extraction workload: a strict metric, a deterministic dataset, SFT that moves it."""

import csv
import json

import pytest
from conftest import cli

from bench.extraction import data, metric

SCHEMA = data.SCHEMAS["payment"]
REF = {"name": "Alex Chen", "date": "2025-10-03", "amount": 47.2}
GOOD = '{"name":"Alex Chen","date":"2025-10-03","amount":47.2}'


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        '  {"name": "Alex Chen", "date": "2025-10-03", "amount": 47.20}\n',  # whitespace, 47.20
        '{"amount":47.2,"date":"2025-10-03","name":"Alex Chen"}',  # key order is free
    ],
)
def test_exact_format_passes(text):
    s = metric.score(text, REF, SCHEMA)
    assert s.format_ok and s.fields_correct == 3


@pytest.mark.parametrize(
    "text, why",
    [
        ("```json\n" + GOOD + "\n```", "start"),  # markdown fence
        (GOOD + "\nHope this helps!", "not one JSON object"),  # trailing prose
        ("Here is the JSON: " + GOOD, "start"),  # leading prose
        ('{"name":"Alex Chen","date":"2025-10-03","amount":47.2,"note":"x"}', "keys"),  # extra key
        ('{"name":"Alex Chen","date":"2025-10-03"}', "keys"),  # missing key
        ('{"name":"Alex Chen","date":"2025-10-03","amount":"47.2"}', "amount is not a number"),
        ("{'name':'Alex Chen','date':'2025-10-03','amount':47.2}", "not one JSON object"),  # quotes
        ('{"name":"Alex Chen","date":"2025-10-03","amount":47.', "not one JSON object"),  # truncated
        ('{"name":"Alex Chen","date":"2025-10-03","amount":NaN}', "not one JSON object"),
        ('{"name":"A","name":"Alex Chen","date":"2025-10-03","amount":47.2}', "duplicate"),
        ('{"name":"Alex Chen","date":"2025-10-03","amount":true}', "amount is not a number"),
        (GOOD + GOOD, "not one JSON object"),  # two objects
        ("[" + GOOD + "]", "start"),
    ],
)
def test_adversarial_outputs_fail(text, why):
    s = metric.score(text, REF, SCHEMA)
    assert not s.format_ok and why in s.reason and s.fields_correct == 0


def test_integer_fields_refuse_fractions_and_field_accuracy_counts_values():
    schema = data.SCHEMAS["booking"]
    ref = {"guest": "Ines Baker", "check_in": "2023-07-05", "nights": 9}
    assert not metric.score(
        '{"guest":"Ines Baker","check_in":"2023-07-05","nights":9.0}', ref, schema
    ).format_ok
    s = metric.score('{"guest":"Ines Baker","check_in":"2023-07-06","nights":9}', ref, schema)
    assert s.format_ok and s.fields_correct == 2
    assert metric.summarize([s, metric.score("nope", ref, schema)]) == {
        "n": 2,
        "format_success": 0.5,
        "field_accuracy": 2 / 6,
    }


def test_dataset_is_deterministic_varied_and_held_out():
    a, b = data.generate(2000, seed=3), data.generate(2000, seed=3)
    assert a == b and a != data.generate(2000, seed=4)
    assert [len(a[k]) for k in ("train", "eval", "test")] == [1600, 200, 200]
    assert {r["schema"] for r in a["train"]} == set(data.SCHEMAS)
    for split in a.values():  # one unambiguous output per prompt, and it meets the format
        for row in split:
            answer = json.loads(row["answer"])
            assert metric.score(row["completion"], answer, data.SCHEMAS[row["schema"]]).fields_correct == len(
                answer
            )
    train_names = {json.loads(r["answer"]).get("name") for r in a["train"]} - {None}
    test_names = {json.loads(r["answer"]).get("name") for r in a["test"]} - {None}
    assert train_names and test_names and not train_names & test_names
    forms = {r["prompt"].split("Text: ")[1] for r in a["train"] if r["schema"] == "payment"}
    assert any("," in f and "$" in f for f in forms) and any("-" in f for f in forms)
    with pytest.raises(ValueError, match="between 2000 and 20000"):
        data.generate(100)


def test_dataset_saves_as_jsonl_and_datasets(tmp_path):
    from datasets import load_from_disk

    splits = data.generate(2000, seed=0)
    data.save(splits, tmp_path)
    assert sum(1 for _ in open(tmp_path / "test.jsonl")) == 200
    assert load_from_disk(str(tmp_path / "hf"))["train"][0] == splits["train"][0]


def _curves(path):
    with open(path / "curves.csv", newline="") as f:
        return [(int(r["step"]), float(r["format_success"])) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_sft_on_cpu_raises_format_success_on_held_out_prompts(tmp_path):
    """The tiny model starts from noise: no output is exact JSON before training; training makes
    some of them so. How many is not stable from run to run on CPU (0.17 to 1.00 at step 800 seen
    on 2-core machines; docs/format-success.md), so the check is that it rises, at 3 of 30 prompts
    or more at some evaluation. The time limit only guards against a hang (the run takes ~80 s on
    an idle 2-core machine)."""
    result = cli("sft", "--device", "cpu", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    curves = _curves(tmp_path)
    assert [s for s, _ in curves] == [0, 200, 400, 600, 800]
    assert curves[0][1] == 0.0 and max(f for _, f in curves[1:]) >= 0.1, curves
    pairs = [json.loads(line) for line in open(tmp_path / "before_after.jsonl")]
    assert len(pairs) == 30 and {"prompt", "reference", "before", "after"} <= set(pairs[0])
    assert (tmp_path / "data" / "test.jsonl").exists() and (tmp_path / "checkpoint" / "state.pt").exists()


@pytest.mark.slow
def test_sft_resumes_from_its_last_checkpoint(tmp_path):
    args = ["sft", "--device", "cpu", "--eval-every", "10", "--eval-samples", "2", "--out", str(tmp_path)]
    first = cli(*args, "--steps", "20")
    assert first.returncode == 0, first.stderr
    assert [s for s, _ in _curves(tmp_path)] == [0, 10, 20]
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "fp32"  # the CPU default
    second = cli(*args, "--steps", "30")
    assert second.returncode == 0, second.stderr
    assert "resumed at step 20" in second.stderr
    assert [s for s, _ in _curves(tmp_path)] == [0, 10, 20, 30]
    done = cli(*args, "--steps", "30")  # nothing left to do: still fine
    assert done.returncode == 0 and "resumed at step 30" in done.stderr


@pytest.mark.torch
def test_sft_on_a_gpu_without_real_weights_explains_how_to_get_them(tmp_path):
    from bench.envinfo import nvml_gpu

    result = cli("sft", "--device", "cuda", "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    if nvml_gpu() is None:
        assert "no CUDA GPU" in result.stderr
    else:
        assert "--weights" in result.stderr and "huggingface-cli download" in result.stderr


@pytest.mark.torch
def test_sft_with_missing_weights_says_how_to_provide_them(tmp_path):
    result = cli("sft", "--device", "cpu", "--weights", "Qwen/Qwen2.5-0.5B-Instruct", "--out", str(tmp_path))
    assert result.returncode == 2 and "not in the Hugging Face cache" in result.stderr


@pytest.mark.slow
def test_sft_curves_go_to_wandb_offline_as_well(tmp_path):
    result = cli(
        "sft",
        "--device",
        "cpu",
        "--steps",
        "10",
        "--eval-every",
        "5",
        "--eval-samples",
        "2",
        "--wandb",
        "--out",
        str(tmp_path),
        env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"},
    )
    assert result.returncode == 0, result.stderr
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0
    assert [s for s, _ in _curves(tmp_path)] == [0, 5, 10]
