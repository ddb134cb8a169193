"""A boundary probe run again at the same commit is not run again: its recorded row stands for
it, so that a search cut short (a time limit, a kill) goes on where it stopped.

A probe's outcome depends on the point, the cap, the code and the card with its libraries, not on
when it ran: probes run again by later runs (other commits) agreed in 1264 of 1270 pairs
(`python -m analysis.bands results`). Reusing one recorded by the same commit on the same card
and libraries saves the minute an Unsloth probe takes, which otherwise put one band search past
a ten-minute time limit.
"""

from __future__ import annotations

from bench.results import _format

# what a recorded probe must share with a new one to stand for it: the point, the search and its
# purpose, the cap, and the code, card and libraries that ran it
SAME_PROBE = (
    "boundary_key", "trial_key", "purpose", "mem_cap_gib", "emulated", "host_gpu", "sdpa_backends",
    "git_commit", "image", "gpu_name", "driver", "cuda", "torch", "transformers", "peft",
    "bitsandbytes", "accelerate", "python", "recipe_versions",
)  # fmt: skip


def known_code(commit: str) -> bool:
    """A commit that says what code ran: not one with uncommitted changes, not unknown."""
    return bool(commit) and commit != "unknown" and not commit.endswith("+dirty")


def recorded_probe(rows: list[dict], new: dict, fresh: bool = False) -> dict | None:
    """A recorded probe that the `new` one (its row before it runs) would repeat: the same point,
    purpose and cap, run by the same commit on the same card and libraries (SAME_PROBE), that fit
    or ran out of memory (`fresh`: after a fresh load, not on a kept model). Its values (numbers
    as numbers), so that a search cut short (a time limit, a kill) goes on where it stopped
    instead of running its trials again; never for code with uncommitted changes (what ran is
    not known)."""
    want = {k: _format(new.get(k)) for k in SAME_PROBE}
    if not known_code(want["git_commit"]):
        return None
    for row in reversed(rows):
        if fresh and row.get("model_load") == "reused":
            continue
        if row.get("status") in ("ok", "oom") and all(row.get(k, "") == v for k, v in want.items()):
            return {k: _number(v) for k, v in row.items()}
    return None


def _number(text: str):
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def elsewhere(rows: list[dict], commit: str) -> list[dict]:
    """The probes recorded_probe never reuses for code at `commit`: another commit's (all of
    them when `commit` does not say what ran)."""
    return [r for r in rows if r.get("git_commit") != commit or not known_code(commit)]
