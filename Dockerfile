# qlora-bench in a container: `docker compose run bench --profile rtx3050` (see docker-compose.yml).
#
# Base: NVIDIA's CUDA 13.0 image (libcudart, the container toolkit's driver hooks). The "base"
# flavour, not "runtime": the CUDA torch wheel brings its own cuBLAS/cuDNN/NCCL (pinned by torch
# itself), so the runtime flavour's copies would only add ~2 GB. torch's CUDA 13 build and
# bitsandbytes' CUDA 13 libraries both cover sm75 (Turing: GTX 1650, T4) through sm90 (Hopper);
# the host needs an NVIDIA driver new enough for CUDA 13 (R580 or later) and the NVIDIA
# Container Toolkit.
# Versions: every Python package is pinned by constraints-gpu.txt: the versions the published
# tables were measured with (torch 2.11.0 + CUDA 13.0, transformers 5.17.0, peft 0.21.0, ...).
# It is constraints.txt, which CI installs (newer CPU torch and transformers), with those
# overrides; tests/test_container.py holds them together. CONSTRAINTS=constraints.txt builds
# the image with CI's versions instead.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-base-ubuntu24.04

FROM ${CUDA_IMAGE} AS deps
ARG CONSTRAINTS=constraints-gpu.txt
# PyTorch's CUDA 13 index; empty: pip's own configuration alone (CI builds a CPU image from a
# local torch wheel, .ci/image)
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
# Ubuntu 24.04's python3 is 3.12. Packages are not version-pinned: Ubuntu's archive drops
# superseded versions, so exact pins break the build within weeks; the base image tag fixes
# the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
RUN python3 -m venv /opt/venv
WORKDIR /app
# Dependencies before the source, so editing the code does not re-download them: torch's CUDA
# 13.0 build (from PyTorch's index, or PyPI's, which is the same CUDA 13 build for 2.11; its own
# dependencies come from PyPI), then setup.cfg's install_requires, all at the pinned versions.
COPY constraints.txt constraints-gpu.txt setup.cfg ./
RUN pip install ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} -c "${CONSTRAINTS}" torch \
    && python3 -c "import configparser; c = configparser.ConfigParser(); c.read('setup.cfg'); print(c['options']['install_requires'])" > /tmp/requires.txt \
    && pip install -c "${CONSTRAINTS}" -r /tmp/requires.txt \
    && rm /tmp/requires.txt
# The user the benchmark runs as (Ubuntu 24.04 images already have "ubuntu" at uid 1000).
RUN (userdel --remove ubuntu 2>/dev/null || true) \
    && useradd --create-home --uid 1000 bench \
    && mkdir -p /app/results /home/bench/.cache \
    && chown bench:bench /app/results /home/bench/.cache

# The test suite in the image: `docker compose run test`.
FROM deps AS test
RUN python3 -c "import configparser; c = configparser.ConfigParser(); c.read('setup.cfg'); print(c['options.extras_require']['test'])" > /tmp/test.txt \
    && pip install -c "${CONSTRAINTS}" -r /tmp/test.txt \
    && rm /tmp/test.txt
COPY --chown=bench:bench . .
RUN pip install --no-deps -e .
USER 1000:1000
ENTRYPOINT ["python", "-m", "pytest"]
CMD ["-q"]

# The benchmark (the default target).
FROM deps AS runtime
COPY README.md pyproject.toml ./
COPY bench ./bench
COPY analysis ./analysis
COPY profiles ./profiles
COPY scripts ./scripts
# Editable, so that the package finds profiles/ and scripts/ beside it in /app.
RUN pip install --no-deps -e .
# Recorded in every result row (columns image, git_commit); compose passes them as build args.
ARG IMAGE=qlora-bench:dev
ARG GIT_COMMIT=
ENV QLORA_BENCH_IMAGE=${IMAGE} \
    QLORA_BENCH_GIT_COMMIT=${GIT_COMMIT} \
    WANDB_MODE=offline
LABEL org.opencontainers.image.title="qlora-bench" \
      org.opencontainers.image.revision="${GIT_COMMIT}"
USER 1000:1000
ENTRYPOINT ["qlora-bench"]
CMD ["--help"]
