#!/usr/bin/env bash
# Gather, into DIR (default .whlgpu), the wheels an offline x86-64 GPU host with Python 3.12 and
# CUDA torch, transformers, peft and accelerate installed still needs to run every recipe of
# qlora-bench: bitsandbytes, datasets, trl, liger-kernel, unsloth (its `studio` web app and CLI
# stripped: 86 MB of JavaScript and servers the training path never imports) and their
# pure-Python dependencies. These are the versions the published recipe rows carry.
# On the host, before anything else, Unsloth's part in a folder of its own: torchao initialises
# CUDA when transformers imports it, and then the worker server that preloads torch & co. cannot
# fork, so every worker starts a fresh interpreter (slower, same measurements):
#   U='torchao|unsloth|cut_cross|tyro|typeguard|docstring'
#   P="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target"
#   $P /tmp/site $(ls DIR/*.whl | grep -Ev $U) && $P /tmp/site_u $(ls DIR/*.whl | grep -E $U)
#   export PYTHONPATH=/tmp/site:$PWD   # /tmp/site_u:/tmp/site:$PWD for --recipe unsloth
# TRL 0.25.1, the last TRL that leaves the adapters of a 4-bit model in fp32 and the loss over the
# full logits (what most published reports ran; docs/recipes.md, "Which TRL"), goes in
# DIR/trl-0.25.1/ for scripts/measure-seeds.sh: $P /tmp/site_trl025 DIR/trl-0.25.1/*.whl and
# TRL_OLD_SITE=/tmp/site_trl025.
set -euo pipefail
DIR="${1:-.whlgpu}"
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
PKGS=(bitsandbytes==0.50.2 datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19
      trl==1.15.0 liger-kernel==0.8.5 unsloth==2026.10.9 unsloth-zoo==2026.10.9
      torchao==0.18.0 cut-cross-entropy==25.1.1 tyro==1.0.17 docstring-parser==0.18.0
      typeguard==4.6.1)
PLAT=()
for p in manylinux_2_28_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 any; do
  PLAT+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${PLAT[@]}" -d "$DIR" "${PKGS[@]}" 2>&1 | grep -v '^WARNING: Location' || true
python3 -m pip download -q --no-deps --only-binary=:all: -d "$DIR/trl-0.25.1" trl==0.25.1 2>&1 \
  | grep -v '^WARNING: Location' || true
# Slim two wheels: unsloth without its web app and CLI; bitsandbytes with only its CPU and
# CUDA 13 libraries (the host's torch is a CUDA 13 build).
python3 - "$DIR" <<'PY'
import glob, re, sys, zipfile

def keep_unsloth(name):
    return not name.startswith(("studio/", "unsloth_cli/"))

def keep_bnb(name):
    lib = re.fullmatch(r"bitsandbytes/libbitsandbytes_(.*)\.so", name)
    return lib is None or lib.group(1) == "cpu" or lib.group(1).startswith("cuda13")

for pattern, keep in (("unsloth-2026*.whl", keep_unsloth), ("bitsandbytes-*.whl", keep_bnb)):
    (path,) = glob.glob(f"{sys.argv[1]}/{pattern}")
    with zipfile.ZipFile(path) as src:
        items = [(i, src.read(i)) for i in src.infolist() if keep(i.filename)]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for info, data in items:
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(l for l in data.splitlines(True) if keep(l.split(b",")[0].decode()))
            out.writestr(info, data)
PY
du -sh "$DIR"
