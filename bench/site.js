// The page's scripts (bench/site.py inlines this file): the fit predictor, with the same
// arithmetic and words as `qlora-bench predict`, the card picker and the compare view.
const DATA = JSON.parse(document.getElementById('data').textContent);
const $ = (id) => document.getElementById(id);
function peak(group, rank, batch, seq) {
  const x = [1.0, rank / 16.0, batch * seq / 1000.0];
  if (!group.flash) x.push(batch * (seq / 1000.0) ** 2);
  let sum = 0;
  for (let i = 0; i < x.length; i++) sum += group.coef[i] * x[i];
  return sum;
}
// bench/predict.py's _card, _group and _setting
const noBf16 = (card, c, dtype) => (dtype === 'bf16' && !c.bf16 ? `--dtype bf16: ${card} has no bf16 (compute capability below 8.0)` : null);
const findGroup = (groups, want) => groups.find((g) => Object.keys(want).every((k) => g[k] === want[k]));
const settingText = (name, seq, batch, rank, dtype, ckpt, recipe) => `${name}, ${seq} tokens x ${batch}, r${rank}, ${dtype}, ${ckpt ? 'ckpt' : 'no ckpt'}, ${recipe}`;
function answer(card, model, seq, batch, rank, dtype, ckpt, recipe) {
  const c = DATA.cards[card];
  const refused = noBf16(card, c, dtype);
  if (refused) return refused;
  const want = {model: model, dtype: dtype, grad_ckpt: ckpt ? 'true' : 'false', recipe: recipe, flash: c.flash};
  const group = findGroup(DATA.groups, want);
  const setting = settingText(model, seq, batch, rank, dtype, ckpt, recipe);
  const failed = group ? null : DATA.failed[[card, model, dtype, ckpt ? 'true' : 'false', recipe].join('|')];
  if (failed) {
    const libs = failed[1].replaceAll('=', ' ').replaceAll(';', ', ') || 'its base stack';
    return `${card}: ${setting}\n  does not run: ${recipe} failed here when measured (emulated; ${libs}): ${failed[0]}`;
  }
  if (!group) return `no measurements to predict ${setting} on a card with ${c.flash ? 'flash attention' : 'no flash attention'}`;
  const p = peak(group, rank, batch, seq);
  const lines = [`${card}: ${setting}`, verdictLine(p, c),
    `  predicted, not measured: a fit to ${group.rows} measured rows of this model, precision, checkpointing and recipe on cards ${c.flash ? 'with' : 'without'} flash attention`];
  if (group.ranks.length === 1 && rank !== group.ranks[0])
    lines.push(`  measured at LoRA rank ${group.ranks[0]} only: the prediction leaves out what r${rank} changes (usually little: the adapters and their optimizer states)`);
  const key = [card, model, dtype, ckpt ? 'true' : 'false', String(rank), recipe].join('|');
  if (batch === 1 && key in DATA.measured)
    lines.push(`  measured on this profile (emulated): the longest sequence at batch 1 is ${DATA.measured[key]} tokens`);
  return lines.join('\n');
}
// `qlora-bench estimate`'s arithmetic and words (analysis/estimate.py), from each setting's
// projected step time exported per card, model and tokens per example.
const hours = (h) => (h < 1 ? `${(h * 60).toFixed(0)} min` : `${h.toFixed(1)} h`);
function job(card, model, examples, tokens, epochs) {
  const found = DATA.jobs.options[[card, model, tokens].join('|')];
  if (!found) return `no measured boundaries of ${model} on ${card} (measure them: qlora-bench boundary --profile ${card} --models ${model})`;
  const head = `${model} on ${card}: ${examples} examples x ${tokens} tokens x ${epochs} epochs`;
  if (!found.length) {
    const others = DATA.jobs.others[[card, model, tokens].join('|')] || [];
    const where = others.length
      ? `measured to train it at batch 1 with: ${others.join('; ')} (their step time is not projected: the projection is fitted to peft's step)`
      : 'nor with another recipe measured (results/boundaries.md)';
    return `${head}: does not fit on peft's path (no measured setting trains ${tokens} tokens at batch 1); ${where}`;
  }
  const err = DATA.jobs.error;
  const options = found.map((o) => {
    const steps = Math.ceil(examples / o.batch) * epochs;
    return {...o, steps: steps, hours: steps * o.step_s / 3600};
  }).sort((a, b) => a.hours - b.hours);
  const lines = [`${head}, PROJECTED (not measured):`];
  options.forEach((o, i) => {
    const setting = `${o.dtype}, ${o.grad_ckpt ? 'ckpt' : 'no ckpt'}, r${o.lora_rank}, batch ${o.batch}`;
    lines.push(`${i === 0 ? '  fastest' : '         '} ${setting}: ~${hours(o.hours)} (band ${hours(o.hours / (1 + err))}-${hours(o.hours * (1 + err))}; ${o.steps} steps of ~${o.step_s.toFixed(2)} s; from the ${o.source})`);
  });
  lines.push(`Band: the projection's 90th-percentile error (${(err * 100).toFixed(0)}%) against the H200's own steps with each model left out; its error on a real small card is not measured.`);
  return lines.join('\n');
}
function jobNow() {
  $('jobanswer').textContent = job($('jcard').value, $('jmodel').value, +$('examples').value, +$('tokens').value, +$('epochs').value);
}
// `qlora-bench predict --config`'s arithmetic and words (bench/architecture.py, bench/predict.py)
function architecture(c) {
  c = c.text_config || c;
  const need = ['hidden_size', 'num_hidden_layers', 'num_attention_heads', 'intermediate_size', 'vocab_size'];
  const bad = need.filter((k) => !Number.isInteger(c[k]) || c[k] <= 0);
  if (bad.length) throw new Error(`the config needs positive integer ${bad.join(', ')} (a decoder's config.json)`);
  const h = c.hidden_size, heads = c.num_attention_heads, kv = c.num_key_value_heads || heads;
  const d = c.head_dim || Math.floor(h / heads), i = c.intermediate_size, L = c.num_hidden_layers, V = c.vocab_size;
  const proj = [[h, heads * d], [h, kv * d], [h, kv * d], [heads * d, h], [h, i], [h, i], [i, h]];
  return {hidden: h, layers: L, heads: heads, intermediate: i, vocab: V,
    body: L * proj.reduce((s, [a, b]) => s + a * b, 0), embeddings: V * h * (c.tie_word_embeddings ? 1 : 2),
    lora: L * proj.reduce((s, [a, b]) => s + a + b, 0)};
}
function archFeatures(a, rank, batch, seq, flash) {
  const G = 2 ** 30, t = batch * seq;
  const x = [1.0, a.body * 0.5 / G, a.embeddings * 2 / G, rank * a.lora * 16 / G, t * a.hidden * a.layers * 2 / G,
    t * a.intermediate * 2 / G, t * a.intermediate * a.layers * 2 / G, t * a.vocab * 4 / G];
  if (!flash) { const s = t * seq * a.heads * 4 / G; x.push(s, s * a.layers); }
  return x;
}
function verdictLine(p, c) {
  const verdict = p <= c.cap ? `fits (${(c.cap - p).toFixed(2)} GiB to spare)` : `does not fit (${(p - c.cap).toFixed(2)} GiB short)`;
  return `  predicted peak reserved ${p.toFixed(2)} GiB against the card's ${c.cap.toFixed(2)} GiB (usable ${c.usable} - CUDA context ${c.context}): ${verdict}`;
}
function answerConfig(card, text, seq, batch, rank, dtype, ckpt, recipe) {
  const c = DATA.cards[card];
  let values, a;
  try { values = JSON.parse(text); a = architecture(values); } catch (e) { return `the config: ${e.message}`; }
  const refused = noBf16(card, c, dtype);
  if (refused) return refused;
  const fitted = DATA.architecture || {groups: []};
  const group = findGroup(fitted.groups, {dtype: dtype, grad_ckpt: ckpt ? 'true' : 'false', recipe: recipe, flash: c.flash});
  const setting = settingText(values._name_or_path || 'config.json', seq, batch, rank, dtype, ckpt, recipe);
  if (!group) return `no cross-architecture fit for ${setting} on a card with${c.flash ? '' : 'out'} flash attention (it needs three measured models of that precision, checkpointing and recipe)`;
  const x = archFeatures(a, rank, batch, seq, c.flash);
  const p = group.coef.reduce((s, v, k) => s + v * x[k], 0);
  const left = fitted.left_out;
  return [`${card}: ${setting}`, verdictLine(p, c),
    `  predicted from the architecture, no row of this model measured: a fit across ${group.models.length} measured models (${group.rows} rows); with each measured model left out its error was ${(left.median_error * 100).toFixed(1)}% (median), its fit/OOM call right ${(left.agreement_away_from_cap * 100).toFixed(1)}% of the time away from the cap: results/predictor.md`].join('\n');
}
function fill(select, values) { select.innerHTML = values.map((v) => `<option>${v}</option>`).join(''); }
function predictNow() {
  const config = $('p-config').value.trim();
  if (config) {
    $('answer').textContent = answerConfig($('p-card').value, config, +$('p-seq').value, +$('p-batch').value,
      +$('p-rank').value, $('p-dtype').value, $('p-ckpt').checked, $('p-recipe').value);
    return;
  }
  $('answer').textContent = answer($('p-card').value, $('p-model').value, +$('p-seq').value, +$('p-batch').value,
    +$('p-rank').value, $('p-dtype').value, $('p-ckpt').checked, $('p-recipe').value);
}
function showCard() {
  for (const el of document.querySelectorAll('.card')) el.hidden = el.dataset.card !== $('card').value;
}
function compare() {
  const chosen = [...document.querySelectorAll('.cmp:checked')].map((el) => el.value);
  for (const row of document.querySelectorAll('#summary tbody tr, #stacks tbody tr'))
    row.hidden = chosen.length > 0 && !chosen.includes(row.cells[0].textContent);
}
const cards = Object.keys(DATA.cards);
fill($('card'), cards); fill($('p-card'), cards); fill($('p-model'), DATA.models);
fill($('jcard'), cards); fill($('jmodel'), DATA.models);
$('compare').innerHTML = cards.map((c) => `<label><input type="checkbox" class="cmp" value="${c}"> ${c}</label>`).join(' ');
const q = new URLSearchParams(location.search);
for (const [k, v] of q) { const el = $('p-' + k) || ['jcard', 'jmodel', 'examples', 'tokens', 'epochs'].includes(k) && $(k); if (el) { if (el.type === 'checkbox') el.checked = v === 'on'; else el.value = v; } }
if (q.get('card')) $('card').value = q.get('card');
for (const c of (q.get('compare') || '').split(',')) { const el = document.querySelector(`.cmp[value="${c}"]`); if (el) el.checked = true; }
for (const el of document.querySelectorAll('#predict select, #predict input, #predict textarea')) el.addEventListener('change', predictNow);
for (const el of document.querySelectorAll('#job select, #job input')) el.addEventListener('change', jobNow);
$('card').addEventListener('change', showCard);
for (const el of document.querySelectorAll('.cmp')) el.addEventListener('change', compare);
showCard(); compare(); predictNow(); jobNow();
if (q.get('view')) {  // one view alone (a link to it, or a screenshot)
  for (const el of document.querySelectorAll('body > section')) el.hidden = el.id !== q.get('view');
}
