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


def test_rank_implication_ignores_alpha_which_follows_rank():
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
    assert implied_oom(r16, [r8]) == r8
