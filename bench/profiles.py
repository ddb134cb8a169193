"""GPU hardware profiles: facts about a card and its default sweep grid, loaded from YAML."""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.catalog import CATALOG_FILE
from bench.errors import BenchUsageError, Checker, ValidationError
from bench.paths import profiles_dir

DTYPES = ("fp16", "bf16")
SDPA_BACKENDS = ("flash", "efficient", "math", "cudnn")


@dataclass(frozen=True)
class GPUSpec:
    match: tuple[str, ...]
    total_vram_gib: float
    usable_vram_gib: float
    context_overhead_gib: float
    compute_capability: tuple[int, int]
    tensor_cores: bool
    native_bf16: bool
    fp16_tensor_tflops: float
    bf16_tensor_tflops: float | None
    fp32_tflops: float
    memory_bandwidth_gbps: float
    sdpa_backends: tuple[str, ...]
    os: str

    @property
    def allocator_cap_gib(self) -> float:
        """What PyTorch's caching allocator may reserve when this card is emulated."""
        return self.usable_vram_gib - self.context_overhead_gib

    def is_this_card(self, device_name: str, total_gib: float) -> bool:
        """Name matches and memory within 10 % (tells a 3060 12 GB from a 3060 Ti 8 GB)."""
        named = any(m.lower() in device_name.lower() for m in self.match)
        return named and abs(total_gib - self.total_vram_gib) <= 0.1 * self.total_vram_gib


@dataclass(frozen=True)
class Grid:
    models: tuple[str, ...]
    seq_lens: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    lora_ranks: tuple[int, ...]
    dtypes: tuple[str, ...]
    grad_ckpt: tuple[bool, ...]
    reference_seq_lens: tuple[int, ...] = (512, 1024, 2048)


@dataclass(frozen=True)
class Profile:
    name: str
    aliases: tuple[str, ...]
    description: str
    gpu: GPUSpec
    grid: Grid
    source: str


def available_profiles() -> dict[str, Path]:
    """Profile name and every alias -> file, for the profiles shipped in profiles/."""
    found: dict[str, Path] = {}
    for path in sorted(profiles_dir().glob("*.yaml")):
        if path.name == CATALOG_FILE:
            continue
        found[path.stem] = path
        try:
            aliases = (yaml.safe_load(path.read_text()) or {}).get("aliases") or []
        except (OSError, yaml.YAMLError, AttributeError):
            aliases = []
        for alias in aliases if isinstance(aliases, list) else []:
            found.setdefault(str(alias), path)
    return found


def resolve_profile_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise BenchUsageError(f"profile file not found: {path}")
        return path
    known = available_profiles()
    if name_or_path not in known:
        names = ", ".join(sorted(known)) or f"(none in {profiles_dir()})"
        raise BenchUsageError(
            f"unknown profile {name_or_path!r}; known profiles: {names}; or pass a path to a YAML file"
        )
    return known[name_or_path]


def load_profile(name_or_path: str, known_models: set[str] | None = None) -> Profile:
    path = resolve_profile_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValidationError(str(path), [f"cannot parse YAML: {exc}"]) from exc
    return parse_profile(data, str(path), known_models)


def _int_list(check: Checker, data: dict, key: str, prefix: str):
    field = f"{prefix}{key}"
    if key not in data:
        check.add(field, "missing")
        return None
    value = data[key]
    ok = (
        isinstance(value, list)
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )
    if not ok:
        check.add(field, f"must be a non-empty list of whole numbers (got {value!r})")
        return None
    if any(v <= 0 for v in value):
        check.add(field, f"every value must be > 0 (got {value!r})")
        return None
    return tuple(sorted(set(value)))


def _compute_capability(check: Checker, gpu: dict, prefix: str):
    raw = gpu.get("compute_capability")
    try:
        major, minor = (int(p) for p in str(raw).split("."))
        return (major, minor)
    except ValueError:
        check.add(f"{prefix}compute_capability", f'must look like "8.6" (got {raw!r})')
        return None


TOP_KEYS = ("name", "aliases", "description", "gpu", "grid")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _unknown_keys(check: Checker, data: dict, known, prefix: str) -> None:
    """A key the profile format does not have is a mistake (a typo would leave the intended value
    unset), never ignored."""
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f"; known: {', '.join(known)}"
            check.add(f"{prefix}{key}", f"unknown key{hint}")


def parse_profile(data, source: str, known_models: set[str] | None = None) -> Profile:
    """Validate a profile mapping; every problem is reported at once, naming its field."""
    check = Checker(source)
    if not isinstance(data, dict):
        check.add("(top level)", "must be a mapping with name, gpu and grid")
        check.raise_if_any()
    _unknown_keys(check, data, TOP_KEYS, "")
    name = check.string(data, "name", "")
    if name and (not NAME_PATTERN.fullmatch(name) or ".." in name):
        check.add("name", f"{name!r}: letters, digits, '.', '_' and '-' only (it names the results folder)")
    aliases = data.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        check.add("aliases", f"must be a list of names (got {aliases!r})")
        aliases = []
    description = data.get("description") or name or ""

    gpu = data.get("gpu")
    spec = None
    if not isinstance(gpu, dict):
        check.add("gpu", "missing or not a mapping")
    else:
        p = "gpu."
        _unknown_keys(check, gpu, [f.name for f in dataclasses.fields(GPUSpec)], p)
        match = check.str_list(gpu, "match", p)
        total = check.number(gpu, "total_vram_gib", p)
        usable = check.number(gpu, "usable_vram_gib", p)
        context = check.number(gpu, "context_overhead_gib", p, positive=False)
        cc = _compute_capability(check, gpu, p)
        tensor_cores = check.boolean(gpu, "tensor_cores", p)
        native_bf16 = check.boolean(gpu, "native_bf16", p)
        fp16 = check.number(gpu, "fp16_tensor_tflops", p)
        bf16 = check.number(gpu, "bf16_tensor_tflops", p, optional=True)
        fp32 = check.number(gpu, "fp32_tflops", p)
        bandwidth = check.number(gpu, "memory_bandwidth_gbps", p)
        sdpa = check.str_list(gpu, "sdpa_backends", p, choices=SDPA_BACKENDS)
        os_name = check.string(gpu, "os", p, choices=("linux", "windows"))
        if total and usable and usable > total:
            check.add(f"{p}usable_vram_gib", f"{usable} is more than total_vram_gib {total}")
        if usable and context is not None and context >= usable:
            check.add(f"{p}context_overhead_gib", f"{context} leaves no memory below usable {usable}")
        if cc and native_bf16 and cc < (8, 0):
            check.add(f"{p}native_bf16", f"true, but compute capability {cc[0]}.{cc[1]} < 8.0 has no bf16")
        if native_bf16 is False and bf16 is not None:
            check.add(f"{p}bf16_tensor_tflops", "given for a card without native bf16 (use null)")
        if cc and sdpa and "flash" in sdpa and cc < (8, 0):
            check.add(f"{p}sdpa_backends", "flash needs compute capability >= 8.0")
        if not check.problems:
            spec = GPUSpec(
                match,
                total,
                usable,
                context,
                cc,
                tensor_cores,
                native_bf16,
                fp16,
                bf16,
                fp32,
                bandwidth,
                sdpa,
                os_name,
            )

    grid = data.get("grid")
    grid_obj = None
    if not isinstance(grid, dict):
        check.add("grid", "missing or not a mapping")
    else:
        p = "grid."
        _unknown_keys(check, grid, [f.name for f in dataclasses.fields(Grid)], p)
        models = check.str_list(grid, "models", p)
        if models and known_models is not None:
            unknown = [m for m in models if m not in known_models]
            if unknown:
                check.add(f"{p}models", f"unknown model(s) {unknown}; known: {sorted(known_models)}")
        seq_lens = _int_list(check, grid, "seq_lens", p)
        batch_sizes = _int_list(check, grid, "batch_sizes", p)
        ranks = _int_list(check, grid, "lora_ranks", p)
        dtypes = check.str_list(grid, "dtypes", p, choices=DTYPES)
        gc = grid.get("grad_ckpt")
        if not isinstance(gc, list) or not gc or not all(isinstance(v, bool) for v in gc):
            check.add(f"{p}grad_ckpt", f"must be a non-empty list of true/false (got {gc!r})")
        refs = _int_list(check, grid, "reference_seq_lens", p) if "reference_seq_lens" in grid else None
        if not check.problems:
            grid_obj = Grid(
                models,
                seq_lens,
                batch_sizes,
                ranks,
                dtypes,
                tuple(dict.fromkeys(gc)),
                *([refs] if refs else []),
            )

    check.raise_if_any()
    return Profile(name, tuple(aliases), description, spec, grid_obj, source)
