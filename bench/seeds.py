"""results/seeds.md: what people report running, against what we measure with their stack.

The reports and the rows that answer them are data (results/seeds/claims.yaml); the rows are
the sweeps scripts/measure-seeds.sh writes beside it (results/seeds/<profile>/trials.csv). A
claim agrees when the row's status is the reported outcome; a stack that fails (an error row) or
the other outcome differs; no row: not measured. Each seed's explanation says whether a
difference has a measured cause or stays open.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bench.errors import BenchUsageError
from bench.results import read_results, versions_text
from bench.spec import EXTRA_DEFAULTS

CLAIMS = Path("seeds") / "claims.yaml"
OUTCOME = {"fits": "ok", "oom": "oom"}


def _load(path: Path) -> list[dict]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BenchUsageError(f"{path}: cannot read the seeds ({type(exc).__name__}: {exc})") from None
    seeds = data.get("seeds") if isinstance(data, dict) else None
    problems = [] if isinstance(seeds, list) else ["no list under 'seeds'"]
    for i, seed in enumerate(seeds or []):
        for key in ("id", "card", "profile", "reported", "source", "claims"):
            if key not in seed:
                problems.append(f"seed {i + 1} has no '{key}'")
        for claim in seed.get("claims", []):
            if claim.get("expect") not in OUTCOME or not isinstance(claim.get("trials"), dict):
                problems.append(f"seed {seed.get('id', i + 1)}: a claim needs expect (fits|oom) and trials")
            if "rows" in claim and not re.fullmatch(r"[\w.+-]+", str(claim["rows"])):
                problems.append(f"seed {seed.get('id', i + 1)}: rows {claim['rows']!r} is not a folder name")
    if problems:
        raise BenchUsageError(f"{path}: " + "; ".join(problems))
    return seeds


# An added axis a claim leaves open means its default: a row measured later with another padding,
# length distribution, evaluation or allocator (for another claim) must not answer it.
def _matches(row: dict, wanted: dict) -> bool:
    return all(
        str(row.get(k) or EXTRA_DEFAULTS.get(k, "")).lower() == str(v).lower()
        for k, v in {**EXTRA_DEFAULTS, **wanted}.items()
    )


def _stack(trials: dict) -> str:
    t = trials
    alpha = f" a{t['lora_alpha']}" if "lora_alpha" in t else ""
    ckpt = "ckpt" if str(t.get("grad_ckpt", "")).lower() == "true" else "no ckpt"
    extra = "".join(
        f", {label} {t[k]}"
        for k, label in (("padding", "padding"), ("lengths", "lengths"), ("eval_batch_size", "eval batch"))
        if k in t
    )
    return (
        f"{t.get('recipe', 'peft')}: {t.get('model')} r{t.get('lora_rank')}{alpha} {t.get('dtype')} {ckpt}, "
        f"{t.get('seq_len')} tokens x {t.get('batch_size')}{extra}"
    )


def _measured(row: dict | None) -> tuple[str, str]:
    if row is None:
        return "not measured", "not measured"
    status = row["status"]
    if status == "ok":
        what = f"fits, {float(row['peak_reserved_gib']):.2f} GiB reserved"
        if row.get("eval_peak_alloc_gib"):  # reserved stays at training's: allocated is eval's own
            what += f"; evaluation allocated {float(row['eval_peak_alloc_gib']):.2f}"
    elif status == "oom":
        what = f"OOM at the {row['mem_cap_gib']} GiB cap"
    else:
        reason = row["reason"]
        what = f"{status}: {reason if len(reason) <= 200 else reason[:200].rsplit(' ', 1)[0] + ' …'}"
    return what, status


def render(results_dir: Path) -> str | None:
    """The seeds table, or None when the results have no seeds."""
    path = Path(results_dir) / CLAIMS
    if not path.exists():
        return None
    lines = [
        "# What people report, against what we measure",
        "",
        "Made by `qlora-bench report` from `results/seeds/claims.yaml` (the reports, their "
        "sources and the configuration chosen where a report leaves one open) and the rows "
        "`scripts/measure-seeds.sh` wrote beside it (`results/seeds/<profile>/trials.csv`, and "
        "`results/seeds/<folder>/<profile>/trials.csv` for the claims measured with another "
        "version of their stack: H200, the card emulated by its allocator cap and kernels). "
        "agrees: the row's outcome is the reported one; differs: the other outcome, or the stack "
        "failed; not measured: no row.",
        "",
    ]
    files: dict[Path, list[dict]] = {}

    def rows_of(seed: dict, claim: dict) -> list[dict]:
        # a claim measured with another version of its stack has its rows in a folder of their own
        # (`rows: trl-0.25.1`: results/seeds/trl-0.25.1/<profile>/trials.csv), as a run refuses
        # to mix versions in one file
        csv = Path(results_dir) / "seeds" / claim.get("rows", "") / seed["profile"] / "trials.csv"
        if csv not in files:
            files[csv] = read_results(csv) if csv.exists() else []
        return files[csv]

    for seed in _load(path):
        lines += [
            f"## {seed['card']}: {seed['id']}",
            "",
            f"Reported: {seed['reported']}  ",
            f"Source: {seed['source']}",
            "",
        ]
        lines += ["| claim | measured (stack and point) | measured | verdict |", "| --- | --- | --- | --- |"]
        peaks = {}
        for claim in seed["claims"]:
            found = [r for r in rows_of(seed, claim) if _matches(r, claim["trials"])]
            row = found[-1] if found else None
            what, status = _measured(row)
            verdict = (
                "not measured"
                if row is None
                else "agrees"
                if status == OUTCOME[claim["expect"]]
                else "differs"
            )
            if row is not None and status == "ok":
                peaks[str(claim["trials"].get("lora_rank"))] = float(row["peak_reserved_gib"])
            note = f" ({claim['note']})" if claim.get("note") else ""
            stack = ", ".join(filter(None, (claim.get("rows"), _stack(claim["trials"]))))
            lines.append(f"| {claim['expect']}{note} | {stack} | {what} | {verdict} |")
        growth = seed.get("growth")
        if growth:
            a, b = (str(v) for v in growth["between"])
            measured = f"{peaks[b] - peaks[a]:+.2f} GiB" if a in peaks and b in peaks else "not measured"
            reported = f"{growth['reported_gib']:+} GB"
            lines += ["", f"Peak reserved from r{a} to r{b}: reported {reported}, measured {measured}."]
        if seed.get("explanation"):
            lines += ["", f"Explanation ({seed.get('explained', 'open')}): {seed['explanation']}"]
        lines.append("")
    used = [row for rows in files.values() for row in rows]
    if used:
        lines += [_provenance(used), ""]
    return "\n".join(lines).rstrip() + "\n"


def _provenance(rows: list[dict]) -> str:
    """What the rows ran on, from the rows: each GPU, driver and library versions, and the
    recipe libraries' versions, once each."""

    def seen(text) -> str:
        return "; ".join(dict.fromkeys(t for t in map(text, rows) if t))

    host = seen(
        lambda r: (
            f"{r.get('host_gpu') or r.get('gpu_name')}, driver {r.get('driver')}, "
            f"{'emulated' if str(r.get('emulated')).lower() == 'true' else 'native'}"
        )
    )
    libraries = ("torch", "transformers", "peft", "bitsandbytes")
    stack = seen(lambda r: ", ".join(f"{k} {r[k]}" for k in libraries if r.get(k)))
    recipes = seen(lambda r: versions_text(r.get("recipe_versions") or ""))
    return f"Rows measured on: {host}; with {stack}; recipe libraries: {recipes}."
