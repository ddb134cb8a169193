"""Grid expansion and OOM implication, without running anything."""

from bench.spec import Axes, expand, implied_oom

AXES = Axes(
    {
        "model": ("tiny",),
        "seq_len": (1024, 256, 512),
        "batch_size": (2, 1),
        "lora_rank": (8,),
        "dtype": ("fp16",),
        "grad_ckpt": (False, True),
    }
)


def test_expand_is_the_full_product_smallest_first():
    specs = expand(AXES)
    assert len(specs) == 3 * 2 * 2
    assert len({s.key for s in specs}) == len(specs)
    first_chain = [(s.batch_size, s.seq_len) for s in specs if s.grad_ckpt][:3]
    assert first_chain == [(1, 256), (1, 512), (1, 1024)]
    assert all(s.lora_alpha == 2 * s.lora_rank for s in specs)


def test_oom_implies_only_larger_points_with_the_rest_equal():
    specs = {(s.seq_len, s.batch_size, s.grad_ckpt): s for s in expand(AXES)}
    oom = specs[(512, 1, True)]
    assert implied_oom(specs[(1024, 1, True)], [oom]) == oom
    assert implied_oom(specs[(512, 2, True)], [oom]) == oom
    assert implied_oom(specs[(256, 2, True)], [oom]) is None  # smaller seq: may fit
    assert implied_oom(specs[(1024, 1, False)], [oom]) is None  # other checkpointing
    assert implied_oom(oom, [oom]) is None


def test_an_oom_at_one_rank_implies_nothing_at_another():
    """Near the cap a larger rank fitted where a smaller one ran out of memory (issue 19)."""
    specs = expand(
        Axes(
            {
                "model": ("tiny",),
                "seq_len": (512,),
                "batch_size": (1,),
                "lora_rank": (8, 16),
                "dtype": ("fp16",),
                "grad_ckpt": (True,),
            }
        )
    )
    r8, r16 = specs
    assert (r8.lora_alpha, r16.lora_alpha) == (16, 32)
    assert implied_oom(r16, [r8]) is None


def test_rows_inferred_across_ranks_are_run_again():
    """Published sweeps hold r16 OOMs inferred from r8 ones by an earlier rule: a sweep treats
    them as not recorded (they run again) and infers nothing from them; an inference today's
    rule makes stays recorded."""
    from bench.sweep import stale_inferences

    def row(seq, rank, status, inferred_from=""):
        spec = AXES.spec(
            model="tiny", seq_len=seq, batch_size=1, lora_rank=rank, dtype="fp16", grad_ckpt=True
        )
        return {**spec.to_row(), "trial_key": spec.key, "status": status, "inferred_from": inferred_from}

    r8 = row(512, 8, "oom")
    longer = row(1024, 8, "oom", r8["trial_key"])
    across = row(512, 16, "oom", r8["trial_key"])
    orphan = row(256, 16, "oom", "no-such-key")
    assert stale_inferences([r8, longer, across, orphan]) == {across["trial_key"], orphan["trial_key"]}


def test_an_added_field_at_its_default_leaves_every_key_as_it_was():
    """docs/adding-an-axis.md: a field added to TrialSpec changes no recorded key at its
    default, and is in the key (as name=value) when it is not."""
    from dataclasses import dataclass, replace

    from bench.spec import TrialSpec, _field

    @dataclass(frozen=True)
    class WithKernel(TrialSpec):
        sdpa: str = _field("card", help="SDPA kernels", axis=True)

    base = TrialSpec("qwen2.5-0.5b", 512, 1, 8, "fp16", True, 16)
    extended = WithKernel("qwen2.5-0.5b", 512, 1, 8, "fp16", True, 16)
    assert extended.key == base.key
    assert replace(extended, sdpa="math").key == base.key + "|sdpa=math"
    assert WithKernel.from_row({**replace(extended, sdpa="math").to_row()}).sdpa == "math"


def test_a_row_reads_back_as_the_spec_that_wrote_it():
    from bench.spec import TrialSpec, Workload

    spec = TrialSpec("tiny", 64, 2, 4, "bf16", False, 8, workload=Workload("sft", 10, 1e-3, 5))
    text = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in spec.to_row().items()}
    assert TrialSpec.from_row(text) == spec
    assert spec.key.endswith("|sft:10:0.001:5")
