"""The recipe axis and the real-batch, evaluation and allocator axes: what runs where, what a
row records, and the clear error for a stack that is not installed."""

from __future__ import annotations

import csv
import importlib.util
import shutil

import pytest
from conftest import REPO, cli

from bench import recipes, seeds

RESULTS = REPO / "results"


def test_a_recipe_whose_library_is_missing_is_a_usage_error_naming_the_extra(monkeypatch):
    from click.testing import CliRunner

    from bench.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "trl" else real(name, *a)
    )
    result = CliRunner().invoke(
        main, ["sweep", "--profile", "t4", "--device", "cpu", "--recipe", "peft,trl", "--dry-run"]
    )
    assert result.exit_code == 2, result.output
    assert "--recipe trl needs trl" in result.output and "pip install 'qlora-bench[trl]'" in result.output


def test_gpu_only_recipes_are_unsupported_on_the_cpu_installed_or_not():
    assert recipes.unsupported_reason("liger", "cpu") and recipes.unsupported_reason("unsloth", "cpu")
    assert recipes.unsupported_reason("liger", "cuda") is None
    assert (
        recipes.unsupported_reason("trl", "cpu") is None and recipes.unsupported_reason("peft", "cpu") is None
    )


@pytest.mark.torch
def test_batches_none_is_the_old_step_and_longest_is_a_collators_padded_batch():
    import torch

    from bench.batches import make_batch, real_tokens

    none = make_batch("none", 3, 16, 100, "cpu")
    gen = torch.Generator(device="cpu").manual_seed(1234)
    old = torch.randint(0, 100, (3, 16), generator=gen)  # what the step built before the axis
    assert set(none) == {"input_ids", "labels"} and torch.equal(none["input_ids"], old)
    padded = make_batch("longest", 3, 16, 100, "cpu")
    mask = padded["attention_mask"]
    assert mask[0].all() and mask.sum(1).min() >= 8  # the longest is seq_len; the rest at least half
    assert (padded["labels"][mask == 0] == -100).all() and (padded["labels"][mask == 1] >= 0).all()
    assert real_tokens(padded) == int(mask.sum()) < real_tokens(none)


def test_lengths_are_a_log_normal_given_by_a_datasets_mean_and_p99_or_a_clear_error():
    import math

    from click.testing import CliRunner

    from bench.cli import main
    from bench.spec import parse_lengths

    assert parse_lengths("fixed") is None
    mu, sigma = parse_lengths("731/1062")
    assert math.isclose(math.exp(mu + sigma**2 / 2), 731)
    assert math.isclose(math.exp(mu + 2.3263479 * sigma), 1062, rel_tol=1e-6)
    for bad in ("731", "a/b", "1062/731", "0/5", "10/1000"):
        with pytest.raises(ValueError, match=repr(bad)):
            parse_lengths(bad)
    for args in (["--lengths", "731/1062"], ["--lengths", "731/1062", "--padding", "longest,none"]):
        result = CliRunner().invoke(main, ["sweep", "--profile", "t4", "--device", "cpu", "--dry-run", *args])
        assert (
            result.exit_code == 2 and "--lengths MEAN/P99 needs --padding longest or packed" in result.output
        )
    result = CliRunner().invoke(
        main, ["sweep", "--profile", "t4", "--device", "cpu", "--eval-new-tokens", "8"]
    )
    assert result.exit_code == 2 and "--eval-new-tokens needs --eval-batch-size" in result.output
    result = CliRunner().invoke(
        main, ["boundary", "--profile", "t4", "--lengths", "1062/731", "--padding", "packed"]
    )
    assert result.exit_code == 2 and "below the 99th percentile" in result.output


@pytest.mark.torch
def test_drawn_lengths_pad_to_the_batchs_longest_and_packed_rows_restart_positions():
    import torch

    from bench.batches import make_batch, real_tokens, sequences
    from bench.spec import parse_lengths

    dist = parse_lengths("731/1062")
    padded = make_batch("longest", 4, 2048, 100, "cpu", seed=5, lengths=dist)
    drawn = padded["attention_mask"].sum(1)
    assert (
        padded["input_ids"].shape[1] == int(drawn.max()) < 2048 and 400 < float(drawn.float().mean()) < 1100
    )
    assert [len(s) for s in sequences(padded)] == drawn.tolist() and real_tokens(padded) == int(drawn.sum())
    packed = make_batch("packed", 2, 2048, 100, "cpu", seed=5, lengths=dist)
    assert "attention_mask" not in packed and packed["input_ids"].shape == (2, 2048)
    pieces = sequences(packed)
    assert len(pieces) > 2 and sum(map(len, pieces)) == 4096 and max(map(len, pieces)) <= 2048
    assert all(torch.equal(packed["position_ids"][0, :n], torch.arange(n)) for n in [len(pieces[0])])
    fixed = make_batch("packed", 2, 64, 100, "cpu")  # every sequence seq_len: the mask-less rows
    assert torch.equal(fixed["input_ids"], make_batch("none", 2, 64, 100, "cpu")["input_ids"])
    assert [len(s) for s in sequences(fixed)] == [64, 64]


@pytest.mark.torch
def test_cpu_sweep_trains_packed_rows_of_drawn_lengths_and_generates_in_evaluation(tmp_path):
    result = cli(
        "sweep", "--profile", "rtx3050", "--device", "cpu", "--seq-lens", "64", "--batch-sizes", "2",
        "--ranks", "8", "--dtypes", "bf16", "--grad-ckpt", "on", "--recipe", "peft,trl",
        "--padding", "packed", "--lengths", "24/40", "--steps", "2", "--warmup-steps", "1",
        "--eval-batch-size", "2", "--eval-new-tokens", "4",
        "--results-dir", str(tmp_path), "--wandb", "off",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(open(tmp_path / "rtx3050-laptop" / "trials-cpu.csv")))
    assert {r["recipe"] for r in rows} == {"peft", "trl"}
    for row in rows:
        assert row["status"] == "ok" and row["lengths"] == "24/40" and float(row["tokens_per_s"]) > 0
        assert row["trial_key"].endswith("|padding=packed|lengths=24/40|eval_batch_size=2|eval_new_tokens=4")
        assert float(row["gen_s"]) > 0 and float(row["eval_s"]) > 0  # the evaluation generated too


@pytest.mark.torch
def test_cpu_sweep_runs_trl_and_records_kernel_versions_eval_and_padding(tmp_path):
    """TRL's own trainer on the CPU; Liger and Unsloth are unsupported rows there; every row
    says which SDPA kernel ran and the recipe's library versions."""
    result = cli(
        "sweep", "--profile", "rtx3050", "--device", "cpu", "--seq-lens", "64", "--batch-sizes", "2",
        "--ranks", "8", "--dtypes", "bf16", "--grad-ckpt", "on", "--recipe", "peft,trl,liger,unsloth",
        "--padding", "longest", "--eval-batch-size", "2", "--steps", "2", "--warmup-steps", "1",
        "--results-dir", str(tmp_path), "--wandb", "off",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = {r["recipe"]: r for r in csv.DictReader(open(tmp_path / "rtx3050-laptop" / "trials-cpu.csv"))}
    assert rows["liger"]["status"] == rows["unsloth"]["status"] == "unsupported"
    assert "GPU only" in rows["liger"]["reason"] and "GPU" in rows["unsloth"]["reason"]
    for name in ("peft", "trl"):
        row = rows[name]
        assert row["status"] == "ok", row["reason"]
        assert row["padding"] == "longest" and row["eval_batch_size"] == "2" and float(row["eval_s"]) > 0
        assert row["sdpa_backend_used"] in ("flash-cpu", "math", "efficient"), row["sdpa_backend_used"]
        assert float(row["tokens_per_s"]) > 0 and row["trial_key"].endswith(
            "|padding=longest|eval_batch_size=2"
        )
    assert rows["trl"]["recipe_versions"].startswith("trl=") and rows["peft"]["recipe_versions"] == ""
    assert int(rows["trl"]["trainable_params"]) == int(rows["peft"]["trainable_params"])  # the same LoRA
    # rows of another TRL (a key does not name the version): a new run there is refused, not mixed in
    path = tmp_path / "rtx3050-laptop" / "trials-cpu.csv"
    path.write_text(path.read_text().replace(rows["trl"]["recipe_versions"], "trl=0.25.0;datasets=4.8.5"))
    before = path.read_bytes()
    again = cli(
        "sweep", "--profile", "rtx3050", "--device", "cpu", "--seq-lens", "128", "--batch-sizes", "2",
        "--ranks", "8", "--dtypes", "bf16", "--recipe", "trl", "--results-dir", str(tmp_path),
    )  # fmt: skip
    assert again.returncode == 2 and "measured with trl 0.25.0" in again.stderr, again.stderr
    assert "--results-dir" in again.stderr and path.read_bytes() == before


def test_report_regenerates_the_seeds_table_byte_for_byte():
    assert seeds.render(RESULTS) == (RESULTS / "seeds.md").read_text()
    last = seeds.render(RESULTS).rstrip().splitlines()[-1]  # what the rows ran on, from the rows
    assert last.startswith("Rows measured on: NVIDIA H200, driver ") and ", emulated;" in last
    assert "transformers 5.17.0" in last and "trl 1.15.0" in last and "trl 0.25.1" in last


def test_seeds_say_agrees_differs_or_not_measured_and_refuse_a_bad_claims_file(tmp_path):
    text = seeds.render(RESULTS)
    assert "| agrees |" in text and "| differs |" in text
    unmeasured = tmp_path / "unmeasured"  # a claim no row answers
    shutil.copytree(RESULTS / "seeds", unmeasured / "seeds")
    claims = unmeasured / "seeds" / "claims.yaml"
    claims.write_text(
        claims.read_text().replace(
            "    claims:\n",
            "    claims:\n      - {expect: fits, trials: {model: qwen2.5-7b, recipe: trl, seq_len: 99}}\n",
            1,
        )
    )
    assert "| not measured |" in seeds.render(unmeasured)
    bad = tmp_path / "seeds"
    bad.mkdir()
    (bad / "claims.yaml").write_text("seeds:\n  - id: x\n    claims: [{expect: maybe}]\n")
    (tmp_path / "t4").mkdir()
    for name in ("boundaries.csv",):  # report needs some boundary rows: take the published t4's
        (tmp_path / "t4" / name).write_text((RESULTS / "t4" / name).read_text())
    result = cli("report", "--results-dir", str(tmp_path))
    assert result.returncode == 2 and "claims.yaml" in result.stderr and "Traceback" not in result.stderr
    assert "expect (fits|oom)" in result.stderr and not (tmp_path / "boundaries.md").exists()


def test_a_claim_that_leaves_an_added_axis_open_is_answered_only_by_its_default():
    """Rows measured later with another padding, length distribution, evaluation or allocator
    (for another claim) must not become the answer of a claim that does not name that axis."""
    claim = {"model": "llama-3.2-1b", "recipe": "unsloth", "seq_len": 2048}
    row = {"model": "llama-3.2-1b", "recipe": "unsloth", "seq_len": "2048", "padding": "none"}
    assert seeds._matches(row, claim) and seeds._matches({**row, "lengths": ""}, claim)  # older files
    for axis, other in (("padding", "longest"), ("lengths", "731/1062"), ("eval_batch_size", "4"),
                        ("allocator", "expandable")):  # fmt: skip
        assert not seeds._matches({**row, axis: other}, claim)
        assert seeds._matches({**row, axis: other}, {**claim, axis: other})


def test_a_claim_of_another_version_of_its_stack_reads_its_own_folder(tmp_path):
    shutil.copytree(RESULTS / "seeds", tmp_path / "seeds")

    def line() -> str:
        return next(x for x in seeds.render(tmp_path).splitlines() if "TRL 0.25.1, checkpointing (its" in x)

    assert line().startswith("| fits (TRL 0.25.1") and "| trl-0.25.1, trl: qwen2.5-0.5b" in line()
    assert line().endswith("| fits, 1.73 GiB reserved | agrees |")  # results/seeds/trl-0.25.1's row
    folder = tmp_path / "seeds" / "trl-0.25.1" / "rtx3050-laptop"
    shutil.rmtree(folder)
    assert line().endswith("| not measured | not measured |")  # never the TRL 1.15 rows beside it
    folder.mkdir(parents=True)  # stand-in rows: the TRL 1.15 ones, whose fp16 point is an error
    shutil.copy(tmp_path / "seeds" / "rtx3050-laptop" / "trials.csv", folder / "trials.csv")
    assert line().endswith("| differs |") and "error" in line()
    claims = tmp_path / "seeds" / "claims.yaml"
    claims.write_text(claims.read_text().replace("rows: trl-0.25.1", "rows: ../elsewhere", 1))
    with pytest.raises(seeds.BenchUsageError, match="rows '../elsewhere' is not a folder name"):
        seeds.render(tmp_path)


def test_measure_scripts_name_only_options_the_cli_has():
    """The published measurements' scripts must not drift from the CLI."""
    names = ("measure-seeds.sh", "measure-recipes.sh", "measure-bands.sh")
    text = "".join((REPO / "scripts" / name).read_text() for name in names)
    help_text = cli("sweep", "--help").stdout + cli("boundary", "--help").stdout
    import re

    for option in set(re.findall(r"(--[a-z][a-z-]+)", text)):
        assert option in help_text, option


@pytest.mark.torch
def test_trainer_keeps_eval_logits_only_for_compute_metrics_and_by_eval_set_not_batch(tmp_path):
    """What the L4 seed's evaluation explanation rests on: transformers' Trainer.evaluate keeps the
    logits only when compute_metrics is given, and then every example's (padded to the longest
    across batches), so what it keeps does not shrink with a smaller evaluation batch."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
    )  # fmt: skip
    lengths = (5, 9, 7, 12, 6, 8, 10, 11)
    data = [{"input_ids": list(range(1, n + 1))} for n in lengths]

    def collate(rows):
        longest = max(len(r["input_ids"]) for r in rows)
        ids = torch.tensor([r["input_ids"] + [0] * (longest - len(r["input_ids"])) for r in rows])
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (longest - len(r["input_ids"])) for r in rows])
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}

    kept = {}
    for batch in (2, 4):
        for metrics in (False, True):
            args = TrainingArguments(
                str(tmp_path / f"{batch}{metrics}"), per_device_eval_batch_size=batch, report_to=[],
                use_cpu=True,
            )  # fmt: skip

            def shapes(p, b=batch):
                kept[b] = p.predictions.shape
                return {}

            trainer = Trainer(
                model=LlamaForCausalLM(config), args=args, eval_dataset=data, data_collator=collate,
                compute_metrics=shapes if metrics else None,
            )  # fmt: skip
            step, logits = trainer.prediction_step, []

            def recorded(*a, step=step, logits=logits, **k):
                out = step(*a, **k)  # (loss, logits, labels): logits None when only the loss is kept
                logits.append(out[1] is not None)
                return out

            trainer.prediction_step = recorded
            trainer.evaluate()
            assert logits == [metrics] * -(-len(lengths) // batch), (batch, metrics, logits)
    assert kept[2] == kept[4] == (len(lengths), max(lengths), config.vocab_size)
