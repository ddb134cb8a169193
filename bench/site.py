"""`qlora-bench site`: one static page for people choosing a GPU, made from results/ alone.

The page (results/site/index.html, readable offline, no server) holds what `report` wrote: the
buyer's summary, every card's boundary tables by recipe, the reports of real runs against our
measurements, the predictor's accuracy; a compare view of two or three cards; the fit predictor
itself, running in the page from results/predictor.json with the same arithmetic and the same
words as `qlora-bench predict`; and a job's time as `qlora-bench estimate` gives it, from each
setting's projected step time (tests/test_site.py checks both against the CLI in a headless
Chromium). Every section says what its numbers are: measured (and emulated, on which
GPU), projected, or predicted, and which file holds their rows.
"""

from __future__ import annotations

import functools
import html
import json
import re
from pathlib import Path

import click

from bench.errors import BenchUsageError

KINDS = {
    "measured": "measured on an H200 with the card emulated (allocator cap, its kernels and dtypes)",
    "projected": "projected from the H200's measured steps to the card's datasheet (not measured on it)",
    "predicted": "predicted by a fit to the measured rows (not measured at this point)",
}


def _inline(text: str) -> str:
    """Markdown's inline code, bold and links, escaped."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)
    return re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="../\2">\1</a>', out)


def markdown(text: str, level_offset: int = 1) -> str:
    """The Markdown `report` writes (headings, paragraphs, pipe tables) as HTML."""
    out, table, para = [], [], []

    def flush():
        if para:
            out.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()
        if table:
            head, *body = [r for r in table if not re.fullmatch(r"\|( *-+ *\|)+", r)]
            cells = [[c.strip() for c in r.strip("|").split(" | ")] for r in (head, *body)]
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in cells[0]))
            out.append("</tr></thead><tbody>")
            for row in cells[1:]:
                out.append("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>")
            out.append("</tbody></table>")
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            if para:
                flush()
            table.append(line.strip())
        elif line.startswith("#"):
            flush()
            level = len(line) - len(line.lstrip("#"))
            out.append(
                f"<h{level + level_offset}>{_inline(line.lstrip('#').strip())}</h{level + level_offset}>"
            )
        elif not line.strip():
            flush()
        else:
            if table:
                flush()
            para.append(line.strip().rstrip("\\").strip())
    flush()
    return "\n".join(out)


def _sections(text: str) -> dict[str, str]:
    """boundaries.md split at its `## card[, recipe r]` headings, keyed by the card."""
    found: dict[str, list[str]] = {}
    for block in re.split(r"(?m)^(?=## )", text)[1:]:
        card = block.splitlines()[0][3:].split(",")[0].strip()
        found.setdefault(card, []).append(block)
    return {card: "".join(blocks) for card, blocks in found.items()}


def page_data(results_dir: Path) -> dict:
    """What the page's scripts need: the predictor's groups, each card's facts, the measured
    batch-1 sequence boundaries (as `predict` shows them)."""
    from bench.catalog import load_catalog
    from bench.predict import failed_search
    from bench.profiles import load_profile
    from bench.results import read_results, variant

    catalog = load_catalog()
    cards = {}
    measured, failed = {}, {}
    for path in sorted(results_dir.glob("*/boundaries.csv")):
        gpu = load_profile(path.parent.name, set(catalog)).gpu
        cards[path.parent.name] = {
            "cap": gpu.allocator_cap_gib,
            "usable": str(gpu.usable_vram_gib),
            "context": str(gpu.context_overhead_gib),
            "flash": "flash" in gpu.sdpa_backends,
            "bf16": gpu.native_bf16,
        }
        for row in read_results(path):
            if row["axis"] == "seq_len" and row["status"] == "ok" and not variant(row, ("recipe",)):
                key = "|".join(
                    [path.parent.name, row["model"], row["dtype"], row["grad_ckpt"], row["lora_rank"],
                     row.get("recipe") or "peft"]
                )  # fmt: skip
                measured.setdefault(key, row["max_value"])  # the first, as predict reads them
            if failed_search(row):
                at = (path.parent.name, row["model"], row["dtype"], row["grad_ckpt"], row.get("recipe"))
                why = [row["reason"], row.get("recipe_versions") or ""]
                failed.setdefault("|".join(v or "peft" for v in at), why)
    predictor = json.loads((results_dir / "predictor.json").read_text())
    return {"groups": predictor["groups"], "cards": cards, "models": list(catalog), "measured": measured,
            "failed": failed,  # searches that errored: the stack fails there (as predict says)
            "architecture": predictor.get("architecture"), "jobs": jobs(results_dir)}  # fmt: skip


JOB_TOKENS = (256, 512, 1024, 2048)  # the page's choice of tokens per example


def jobs(results_dir: Path) -> dict:
    """What the page's job estimate needs, as `qlora-bench estimate` computes it: per card, model
    and tokens per example (JOB_TOKENS), each setting that trains it with its projected step
    time; the page multiplies by the job's steps. And the band's error."""
    from analysis.data import load
    from analysis.estimate import boundary_rows, job_options, other_recipes
    from analysis.projection import calibrated
    from bench.profiles import load_profile

    data = load(results_dir)
    projection, bounds = calibrated(data), data.boundaries
    if projection is None or bounds.empty:
        return {"error": None, "options": {}, "others": {}}
    error = projection.calibration()["p90_error_left_out"]
    options, others = {}, {}  # others: where peft's path does not train it, the recipes that do
    every_recipe = functools.cache(lambda card: boundary_rows(Path(results_dir), card))  # read once
    for (card, model), rows in bounds.groupby(["profile", "model"]):  # peft's (analysis.data)
        profile = load_profile(card)
        for tokens in JOB_TOKENS:
            found = job_options(projection, profile, rows, 1, tokens, 1, error)
            keep = ("dtype", "grad_ckpt", "lora_rank", "batch", "step_s", "source")
            key = "|".join([card, model, str(tokens)])
            options[key] = [{k: o[k] for k in keep} for o in found]
            if not found:
                others[key] = other_recipes(every_recipe(card), model, tokens)
    return {"error": error, "options": options, "others": others}


STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:0 1em 3em;color:#222}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}
th{background:#f2f2f2}code{background:#f4f4f4;padding:0 2px}.kind{font-size:12px;color:#555;
border-left:4px solid #999;padding-left:6px}.kind b{color:#000}nav a{margin-right:1em}
#answer,#jobanswer{background:#f7f7f2;border:1px solid #ddd;padding:.6em;white-space:pre-wrap}
form label{margin-right:1em;display:inline-block}img{max-width:100%}
"""


def _kind(kind: str, source: str) -> str:
    return f'<p class="kind"><b>{kind}</b>: {html.escape(KINDS[kind])}. Rows: <code>{source}</code>.</p>'


def render(results_dir: Path) -> str:
    results_dir = Path(results_dir)
    try:
        boundaries = (results_dir / "boundaries.md").read_text()
        purchase = (results_dir / "purchase.md").read_text()
        accuracy = (results_dir / "predictor.md").read_text()
        data = page_data(results_dir)
    except (OSError, ValueError, KeyError) as exc:
        raise BenchUsageError(
            f"{results_dir}: no report to make a site of ({type(exc).__name__}: {exc}); "
            "run `qlora-bench report` first"
        ) from None
    seeds = results_dir / "seeds.md"
    summary, _, stacks = purchase.partition("## How far each training stack gets")
    cards = "".join(
        f'<section class="card" data-card="{card}">{markdown(text)}</section>\n'
        for card, text in _sections(boundaries).items()
    )
    figures = "".join(
        f'<figure><img src="../figures/{p.name}" alt="{p.stem}"><figcaption>{p.name}</figcaption></figure>'
        for p in sorted((results_dir / "figures").glob("*.png"))
    )
    tokens = "".join(f"<option>{t}</option>" for t in JOB_TOKENS)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).replace("</", "<\\/")
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>qlora-bench: will my QLoRA run fit this GPU?</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body>
<h1>Will my QLoRA run fit this GPU?</h1>
<p>Made by <code>qlora-bench site</code> from <code>results/</code>. Every number below says what it is:
<b>measured</b>, <b>projected</b> or <b>predicted</b>.</p>
<nav><a href="#predict">predict</a><a href="#job">job time</a><a href="#summary-section">compare cards</a>
<a href="#cards">one card's tables</a><a href="#stacks">training stacks</a>
<a href="#seeds">reports of real runs</a><a href="#figures">figures</a></nav>
<section id="predict"><h2>Predict a configuration</h2>
{_kind("predicted", "results/predictor.json (fitted by analysis/predict.py)")}
<form onsubmit="return false">
<label>card <select id="p-card"></select></label><label>model <select id="p-model"></select></label>
<label>tokens <input id="p-seq" type="number" min="1" value="2048"></label>
<label>batch <input id="p-batch" type="number" min="1" value="1"></label>
<label>LoRA rank <input id="p-rank" type="number" min="1" value="16"></label>
<label>precision <select id="p-dtype"><option>fp16</option><option>bf16</option></select></label>
<label><input id="p-ckpt" type="checkbox" checked> gradient checkpointing</label>
<label>recipe <select id="p-recipe"><option>peft</option><option>loop</option><option>trl</option>
<option>liger</option><option>unsloth</option></select></label>
<label>or, for a model not in the list, its config.json:<br><textarea id="p-config" rows="3" cols="70"
placeholder='{{"hidden_size": 4096, "num_hidden_layers": 32, ...}}'></textarea></label></form>
<pre id="answer"></pre>
<p>The same answer, in a shell: <code>qlora-bench predict --profile CARD --model MODEL --seq-len N</code>
(or <code>--config config.json</code>).</p>
{markdown(accuracy, 2)}</section>
<section id="job"><h2>How long will my job take?</h2>
{_kind("projected", "results/&lt;card&gt;/boundaries.csv (settings), analysis/projection.py (steps)")}
<form onsubmit="return false">
<label>card <select id="jcard"></select></label><label>model <select id="jmodel"></select></label>
<label>examples <input id="examples" type="number" min="1" value="5000"></label>
<label>tokens per example <select id="tokens">{tokens}</select></label>
<label>epochs <input id="epochs" type="number" min="1" value="2"></label></form>
<pre id="jobanswer"></pre>
<p>The same answer, in a shell: <code>qlora-bench estimate --profile CARD --model MODEL --examples N
--tokens T --epochs E</code> (any T).</p></section>
<section id="summary-section"><h2>Compare cards</h2>
{_kind("measured", "results/&lt;card&gt;/boundaries.csv")}
{_kind("projected", "the reference job's hours: analysis/projection.py")}
<p>Tick two or three cards to see only them: <span id="compare"></span></p>
<div id="summary">{markdown(summary, 1)}</div></section>
<section id="cards"><h2>One card's tables, by recipe</h2>
{_kind("measured", "results/&lt;card&gt;/boundaries.csv, every probe in boundary-trials.csv")}
<p><label>card <select id="card"></select></label></p>
{cards}</section>
<section id="stacks">{_kind("measured", "results/&lt;card&gt;/boundaries.csv, recipe column")}
{markdown("## How far each training stack gets" + stacks, 1)}</section>
<section id="seeds">{_kind("measured", "results/seeds/&lt;card&gt;/trials.csv")}
{markdown(seeds.read_text(), 1) if seeds.exists() else ""}</section>
<section id="figures"><h2>Figures</h2>{_kind("measured", "results/&lt;card&gt;/*.csv (qlora-bench plot)")}
{figures}</section>
<script type="application/json" id="data">{blob}</script>
<script>{(Path(__file__).with_name("site.js")).read_text()}</script>
</body></html>
"""
    return body


def write(results_dir: Path, out: Path) -> Path:
    text = render(results_dir)
    target = Path(out) / "index.html"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    except OSError as exc:
        raise BenchUsageError(f"cannot write {target}: {exc}") from exc
    return target


@click.command()
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder for index.html (default: <results-dir>/site, beside the figures it shows).",
)
def site(results_dir, out):
    """Write the static page for choosing a GPU (index.html) from results/: open it in a browser."""
    import sys

    try:
        click.echo(write(results_dir, out or Path(results_dir) / "site"))
    except BenchUsageError as exc:
        click.echo(f"qlora-bench: error: {exc}", err=True)
        sys.exit(2)
