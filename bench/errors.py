"""Errors that stop a command before anything is written (exit code 2)."""


class BenchUsageError(Exception):
    """Bad input or an environment that cannot run the request. The CLI prints it and exits 2."""


class ValidationError(BenchUsageError):
    """A data file failed validation; holds every problem found, each naming file and field."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {source}: {p}" for p in problems)
        super().__init__(f"{source} is not valid ({len(problems)} problem(s)):\n{lines}")


class Checker:
    """Collects validation problems instead of failing on the first (torchtune-style)."""

    def __init__(self, source: str):
        self.source = source
        self.problems: list[str] = []

    def add(self, field: str, message: str) -> None:
        self.problems.append(f"{field}: {message}")

    def raise_if_any(self) -> None:
        if self.problems:
            raise ValidationError(self.source, self.problems)

    def number(self, data: dict, key: str, prefix: str, *, positive=True, optional=False):
        field = f"{prefix}{key}"
        if key not in data:
            if not optional:
                self.add(field, "missing")
            return None
        value = data[key]
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.add(field, f"must be a number (got {value!r})")
            return None
        if positive and value <= 0:
            self.add(field, f"must be > 0 (got {value!r})")
            return None
        return float(value)

    def boolean(self, data: dict, key: str, prefix: str):
        if key not in data:
            self.add(f"{prefix}{key}", "missing")
            return None
        if not isinstance(data[key], bool):
            self.add(f"{prefix}{key}", f"must be true or false (got {data[key]!r})")
            return None
        return data[key]

    def string(self, data: dict, key: str, prefix: str, *, choices=None, optional=False):
        if key not in data or data[key] is None:
            if not optional:
                self.add(f"{prefix}{key}", "missing")
            return None
        value = data[key]
        if not isinstance(value, str) or not value:
            self.add(f"{prefix}{key}", f"must be a non-empty string (got {value!r})")
            return None
        if choices is not None and value not in choices:
            self.add(f"{prefix}{key}", f"must be one of {', '.join(choices)} (got {value!r})")
            return None
        return value

    def str_list(self, data: dict, key: str, prefix: str, *, choices=None, optional=False):
        if key not in data:
            if not optional:
                self.add(f"{prefix}{key}", "missing")
            return None
        value = data[key]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            self.add(f"{prefix}{key}", f"must be a non-empty list of strings (got {value!r})")
            return None
        if choices is not None:
            bad = [v for v in value if v not in choices]
            if bad:
                self.add(f"{prefix}{key}", f"unknown value(s) {bad}; choose from {list(choices)}")
                return None
        return tuple(value)
