"""The container path, checked without a Docker engine: the compose service's command line
reaches the CLI as a user types it, the compose file asks for what a GPU job needs, and the
image installs the versions CI tests. (hadolint and `docker-compose config` also run in .ci/run.)"""

import configparser
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, read_rows

DOCKERFILE = (REPO / "Dockerfile").read_text()
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _stages() -> dict[str, str]:
    """Dockerfile stage name -> its instructions."""
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", DOCKERFILE, flags=re.M | re.I)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _exec_form(stage: str, instruction: str) -> list[str]:
    found = re.findall(rf"^{instruction}\s+(\[.*\])\s*$", _stages()[stage], flags=re.M)
    assert len(found) == 1, f"one {instruction} in stage {stage}"
    return json.loads(found[0])


def _command_line(service: str, typed: list[str]) -> list[str]:
    """What `docker compose run <service> <typed...>` executes: the service's entrypoint (its
    own, else its build target's), then what was typed (which replaces CMD)."""
    spec = COMPOSE["services"][service]
    entrypoint = spec.get("entrypoint") or _exec_form(spec["build"]["target"], "ENTRYPOINT")
    return [*entrypoint, *typed]


def _run_in_this_env(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run an image command line here: its console script is the one `pip install` made in
    this environment from the same setup.cfg."""
    script = Path(sys.executable).parent / argv[0]
    assert script.exists(), f"{argv[0]} is not a console script of this environment"
    return subprocess.run([str(script), *argv[1:]], capture_output=True, text=True, timeout=600, **kwargs)


def test_the_default_stage_is_the_benchmark_and_its_entrypoint_is_the_cli():
    assert list(_stages())[-1] == "runtime"  # `docker build .` without --target builds it
    assert COMPOSE["services"]["bench"]["build"]["target"] == "runtime"
    assert _exec_form("runtime", "ENTRYPOINT") == ["qlora-bench"]
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert "qlora-bench = bench.cli:main" in cfg["options.entry_points"]["console_scripts"]


def test_profile_with_no_subcommand_runs_the_sweep(tmp_path):
    """`docker compose run bench --profile rtx3050` -> the sweep (dry run here: no GPU)."""
    argv = _command_line("bench", ["--profile", "rtx3050", "--device", "cpu", "--dry-run"])
    assert argv[:3] == ["qlora-bench", "--profile", "rtx3050"]
    result = _run_in_this_env(argv, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "rtx3050-laptop:" in result.stdout and "points" in result.stdout


def test_a_subcommand_runs_that_subcommand(tmp_path):
    """`docker compose run bench report` -> the report, from a copy of the published results."""
    shutil.copytree(REPO / "results", tmp_path / "results")
    result = _run_in_this_env(_command_line("bench", ["report"]), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "results" / "boundaries.md").read_text() == (
        REPO / "results/boundaries.md"
    ).read_text()


def test_the_bench_service_has_the_gpu_the_results_the_caches_and_wandb_offline():
    bench = COMPOSE["services"]["bench"]
    devices = bench["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    workdir = re.findall(r"^WORKDIR\s+(\S+)", DOCKERFILE, flags=re.M)[-1]
    mounts = {v.rsplit(":", 1)[1]: v.rsplit(":", 1)[0] for v in bench["volumes"]}  # target -> source
    assert mounts[f"{workdir}/results"] == "./results"  # the CLI's default --results-dir, on the host
    assert "/home/bench/.cache/huggingface" in mounts and "/home/bench/.cache/qlora-bench" in mounts
    env = bench["environment"]
    assert "WANDB_MODE=${WANDB_MODE:-offline}" in env and "WANDB_API_KEY" in env
    assert bench["shm_size"] and bench["ulimits"]["memlock"] == -1
    assert re.search(r"^USER\s+1000:1000\s*$", _stages()["runtime"], flags=re.M)  # not root
    test = COMPOSE["services"]["test"]
    assert test["build"]["target"] == "test" and _exec_form("test", "ENTRYPOINT")[-1] == "pytest"


def _pins(name: str = "constraints.txt") -> dict[str, str]:
    pins = {}
    for line in (REPO / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            package, _, version = line.partition("==")
            assert version, f"{name}: {line!r} is not pinned with =="
            pins[re.sub(r"[-_.]+", "-", package).lower()] = version
    return pins


# What the GPU image pins differently from CI (constraints-gpu.txt's header says why).
GPU_OVERRIDES = {"torch", "transformers", "peft", "trl", "huggingface-hub"}


def test_the_image_pins_the_versions_the_published_rows_were_measured_with():
    """One source of truth: the GPU image's pins are CI's but for GPU_OVERRIDES, and those (with
    the shared bitsandbytes and accelerate pins) are the versions every published GPU row names."""
    import csv

    ci, gpu = _pins(), _pins("constraints-gpu.txt")
    assert ci.keys() == gpu.keys()
    assert {p for p in ci if ci[p] != gpu[p]} == GPU_OVERRIDES
    columns = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")
    seen = {c: set() for c in (*columns, "trl")}
    paths = [*REPO.glob("results/*/boundaries.csv"), *REPO.glob("results/*/trials.csv")]
    paths += REPO.glob("results/seeds/*/trials.csv")
    for path in paths:
        for row in csv.DictReader(open(path, newline="")):
            for column in columns:
                if row.get(column):
                    seen[column].add(row[column])
            for part in (row.get("recipe_versions") or "").split(";"):
                if part.startswith("trl="):
                    seen["trl"].add(part[4:])
    assert all(seen.values()), seen
    for package, versions in seen.items():
        assert versions == {gpu[package]}, (package, versions, gpu[package])


def _requirement_names(text: str) -> list[str]:
    return [
        re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\s\[]", r.strip())[0]).lower()
        for r in text.split("\n")
        if r.strip()
    ]


def test_the_image_and_ci_install_the_same_pinned_versions():
    pins = _pins()
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    wanted = _requirement_names(cfg["options"]["install_requires"])
    wanted += _requirement_names(cfg["options.extras_require"]["test"])
    assert [n for n in wanted if n not in pins] == []
    # every pip install in the image is constrained, except the package itself (--no-deps)
    installs = re.findall(r"pip install ([^\\\n&]*)", DOCKERFILE)
    assert installs and all('-c "${CONSTRAINTS}"' in i or i.startswith("--no-deps -e .") for i in installs)
    assert "ARG CONSTRAINTS=constraints-gpu.txt" in DOCKERFILE
    # the image reads its requirement lists from setup.cfg, as pip does for CI
    assert "c['options']['install_requires']" in DOCKERFILE
    assert "c['options.extras_require']['test']" in DOCKERFILE
    ci = (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "pip install -q -c constraints.txt -e '.[test]'" in ci
    assert "pip install -c constraints.txt -e '.[test]' && python -m pytest -q" in readme


@pytest.mark.skipif(
    shutil.which("hadolint") is None and not (Path(sys.executable).parent / "hadolint").exists(),
    reason="hadolint not installed (pip install -e '.[test]' installs it)",
)
def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_rows_record_the_image_they_ran_in(tmp_path):
    """Inside the image QLORA_BENCH_IMAGE is set (Dockerfile ENV, from the compose build arg);
    every row carries it."""
    from conftest import cli

    args = ["--profile", "rtx3050", "--device", "cpu", "--seq-lens", "64", "--batch-sizes", "1"]
    args += ["--ranks", "4", "--dtypes", "fp16", "--grad-ckpt", "off", "--results-dir", str(tmp_path)]
    # W&B's own WANDB_MODE (compose passes it through) sets --wandb: disabled is off
    result = cli(*args, env={"QLORA_BENCH_IMAGE": "qlora-bench:1.2.3", "WANDB_MODE": "disabled"})
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "wandb").exists()
    rows = read_rows(tmp_path / "rtx3050-laptop" / "trials-cpu.csv")
    assert rows and {r["image"] for r in rows} == {"qlora-bench:1.2.3"}
