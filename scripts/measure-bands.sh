#!/usr/bin/env bash
# Band searches (`boundary --band 0.3`) for the published boundaries that have none, as several
# jobs beside one another on one large GPU, within a time limit: how the bands of the seventh
# to eleventh sessions (2026-12-04) were gathered, the commands docs/published-results.md lists.
#
# Each job writes to a folder of its own (DIR/devX: copies of its profiles' folders of results/,
# made on the first call, reused after), so the jobs take no lock from each other; a job's
# searches cut by the limit go on in the next call from their recorded probes (same commit:
# bench/boundary/reuse.py). Each command runs as `timeout -k 15 LEFT-8 ... --time-budget
# LEFT-80` and is skipped when less than 120 s are left. Afterwards, merge each folder back:
#   python scripts/merge-results.py DIR/devX PROFILE...
# The jobs' host memory: each command's QLORA_BENCH_HOST_HEADROOM_GIB leaves the others theirs
# (an H200's 140 GiB: P 88, R 18, T 27, U 38); HEADROOM_P, HEADROOM_R, HEADROOM_T, HEADROOM_U
# override them (a job alone on the GPU: HEADROOM_U=16 JOBS=U). PARALLEL_P ... PARALLEL_U set a
# job's slots (--parallel; auto otherwise): alone, the Unsloth job took 8 slots with a spare each,
# and workers were killed (SIGKILL) as they started, with host memory not short (DIR/logs/memN.txt:
# `free -m` every 5 s beside each call; python3 scripts/host-memory.py DIR/logs/mem*.txt sums it up;
# DIR/logs/cgN.txt: the container's cgroup memory use, limit and OOM-kill count every 5 s).
#
# On an offline GPU host, install scripts/gpu-wheels.sh's wheels first (its header says how).
# Jobs F, FG, FL and FS search with --fresh instead of --band (below, where FRESH is set); run them
# with JOBS="F FG FL FS" and compare them with results/: python -m analysis.fresh DIR.
# Usage: LEFT=seconds [DIR=.gpu] [PACK=file.tgz] [JOBS="P R T"] [HEADROOM_X=GiB] [PARALLEL_X=N]
#   scripts/measure-bands.sh
#   LEFT  seconds this call may use; PACK  a tarball of DIR's folders and logs, written every 30 s
#   (what comes back from a machine that is taken away mid-call); QLORA_BENCH_GIT_COMMIT must name
#   the commit when the tree has no .git (a copy of the checkout), or no probe is reused.
set -u
cd "$(dirname "$0")/.."
S0=$(date +%s)
LEFT=${LEFT:?LEFT=seconds this call may use}
DIR=${DIR:-.gpu}
JOBS=${JOBS:-P R T}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$DIR/logs"
left() { echo $((LEFT - ($(date +%s) - S0))); }
B="python3 -m bench boundary --ranks 16 --grad-ckpt on --axes seq_len"
BB="python3 -m bench boundary"

copy() {  # copy JOB PROFILE...: the job's folder, from results/, once; for a job F... (fresh-load
  # searches) only the profiles' probes: no boundary recorded, so each is searched again, another
  # commit's probes giving the search its start
  local d=$DIR/dev$1 job=$1 p
  shift
  [ -d "$d" ] && return
  for p in "$@"; do
    mkdir -p "$d/$p"
    if [[ $job == F* ]]; then cp "results/$p/boundary-trials.csv" "$d/$p/"; else cp -r "results/$p/." "$d/$p/"; fi
  done
}

band() {  # band HEADROOM_GIB JOB COMMAND...: one band command (job F...: a fresh-load search,
  # FRESH's flags), cut at the call's end
  local override="HEADROOM_$2" slots="PARALLEL_$2"
  local headroom=${!override:-$1} job=$2 t flags="--band 0.3"
  [[ $job == F* ]] && flags=$FRESH
  local parallel=${!slots:+--parallel ${!slots}}
  shift 2
  t=$(left)
  if [ "$t" -lt 120 ]; then
    echo "skipped (${t} s left): $*"
    return
  fi
  QLORA_BENCH_HOST_HEADROOM_GIB=$headroom timeout -k 15 $((t - 8)) "$@" $flags $parallel \
    --time-budget $((t - 80)) --results-dir "$DIR/dev$job"
}

jobP() {  # peft: the 12-24 GB cards first, then the rest (done by the eighth session), then
  # t4's boundaries with the expandable allocator and l4's evaluation batch
  copy P rtx3060-12gb rtx4060ti-16gb l4 t4 rtx3070
  band 52 P $BB --profile rtx3060-12gb --profile rtx4060ti-16gb --profile l4 --profile t4 --profile rtx3070
  band 52 P $B --profile t4 --dtypes fp16 --allocator expandable
  band 52 P $BB --profile l4 --models llama-3.2-3b --recipe peft --ranks 32 --lora-alpha-ratio 1 --dtypes bf16 \
    --grad-ckpt on --axes eval_batch_size --ref-seq-lens 2048 --padding longest
}

jobR() {  # gtx1650's 3B models (outside the default grid) on the peft path, all at 0 (the band
  # searches the eleventh session left), then the loop and Liger recipes: those models, t4, l4
  copy R gtx1650 t4 l4
  band 122 R $BB --profile gtx1650 --recipe peft --models llama-3.2-3b,qwen2.5-3b --dtypes fp16
  band 122 R $BB --profile gtx1650 --recipe loop --models llama-3.2-3b,qwen2.5-3b --dtypes fp16
  band 122 R $B --profile t4 --profile l4 --recipe loop,liger --dtypes fp16
  band 122 R $B --profile t4 --profile l4 --models qwen2.5-0.5b,qwen2.5-1.5b --recipe loop --dtypes fp16 \
    --allocator expandable
}

jobT() {  # TRL in bf16
  copy T rtx3070 l4
  band 113 T $B --profile l4 --profile rtx3070 --recipe trl --dtypes bf16
}

jobU() {  # Unsloth (its own site first on PYTHONPATH: scripts/gpu-wheels.sh)
  copy U gtx1650 rtx3050-laptop rtx3070 t4 l4
  PYTHONPATH=${UNSLOTH_SITE:-/tmp/site_u}:${PYTHONPATH:-} band 102 U $B --profile gtx1650 \
    --profile rtx3050-laptop --profile rtx3070 --profile t4 --profile l4 --recipe unsloth --dtypes fp16
}

# Fresh-load searches (--fresh: every probe in a worker that ran none, as a user's run starts) of
# the boundaries whose published search leaned on kept models: the 5 whose fitting end ran on a
# kept model near the cap, and the 7 whose safe-value scan's inversions ran on one (the 8th's ran
# after a fresh load), in four jobs of at most 34 GiB of slots each (`python -m analysis.fresh`
# compares them with results/; they are not merged, as they have no band)
FRESH="--fresh"
jobF() {  # t4, peft: Qwen2.5-0.5B and 1.5B (inversions), Llama-3.2-1B's batch at 512 (near the cap)
  copy F t4
  band 106 F $B --profile t4 --models qwen2.5-0.5b,qwen2.5-1.5b --dtypes fp16
  band 106 F $BB --profile t4 --models llama-3.2-1b --ranks 8,16 --dtypes fp16 --grad-ckpt on \
    --axes batch_size --ref-seq-lens 512
}

jobFG() {  # t4, loop: Qwen2.5-7B (near the cap)
  copy FG t4
  band 118 FG $B --profile t4 --recipe loop --models qwen2.5-7b --dtypes fp16
}

jobFL() {  # l4: Llama-3.2-1B r8 (peft) and Qwen2.5-1.5B r16 (loop), both near the cap
  copy FL l4
  band 114 FL $BB --profile l4 --models llama-3.2-1b --ranks 8 --dtypes fp16 --grad-ckpt on --axes seq_len
  band 114 FL $B --profile l4 --recipe loop --models qwen2.5-1.5b --dtypes fp16
}

jobFS() {  # inversions: rtx4060ti-16gb Qwen2.5-0.5B r8 fp16 and bf16, rtx3070's loop Qwen2.5-0.5B
  # and Liger Llama-3.2-1B, gtx1650's Liger Qwen2.5-1.5B
  copy FS rtx4060ti-16gb rtx3070 gtx1650
  band 106 FS $BB --profile rtx4060ti-16gb --models qwen2.5-0.5b --ranks 8 --dtypes fp16,bf16 --grad-ckpt on \
    --axes seq_len
  band 106 FS $B --profile rtx3070 --recipe loop --models qwen2.5-0.5b --dtypes fp16
  band 106 FS $B --profile rtx3070 --recipe liger --models llama-3.2-1b --dtypes fp16
  band 106 FS $B --profile gtx1650 --recipe liger --models qwen2.5-1.5b --dtypes fp16
}

cgroup_memory() {  # this container's memory use, limit and OOM kills: its own cgroup's files (v2,
  # /proc/self/cgroup's `0::PATH`; the root's have none), else cgroup v1's memory controller
  local d f
  d=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup 2>/dev/null)
  for f in "$d/memory.current" "$d/memory.max" "$d/memory.events" /sys/fs/cgroup/memory/memory.usage_in_bytes \
    /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory/memory.oom_control; do
    [ -r "$f" ] && echo -n "${f##*/}: $(tr '\n' ' ' <"$f")"
  done
}

pack() {
  [ -n "${PACK:-}" ] || return 0
  tar czf "$PACK.tmp" "$DIR"/dev* "$DIR/logs" 2>/dev/null && mv "$PACK.tmp" "$PACK"
}

N=$(($(find "$DIR/logs" -name 'call*' | wc -l) + 1))  # this call's number, for its logs
touch "$DIR/logs/call$N"
pids=()
for j in $JOBS; do
  "job$j" >"$DIR/logs/$j$N.log" 2>&1 &
  pids+=($!)
done
(while sleep 30; do pack; done) &
packer=$!
(while sleep 5; do echo "$(date +%T) $(free -m | sed -n 2p)"; done) >"$DIR/logs/mem$N.txt" 2>&1 &
sampler=$!
(while sleep 5; do echo "$(date +%T) $(cgroup_memory)"; done) >"$DIR/logs/cg$N.txt" 2>&1 &
cgsampler=$!
wait "${pids[@]}"
kill "$packer" "$sampler" "$cgsampler" 2>/dev/null
pack
for j in $JOBS; do
  echo "== $j (call $N)"
  grep -E "boundaries \(|left for a rerun|skipped|Error" "$DIR/logs/$j$N.log" | tail -8
done
