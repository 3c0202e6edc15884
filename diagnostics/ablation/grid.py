"""Grid files: the fields and values to cross, in TOML.

A grid file has a ``[grid]`` table of ``field = [values]``, an optional
``base = "variant"`` (default ``reference``) and an optional ``[set]`` table
of field overrides applied to the base before crossing::

    base = "authors"

    [set]
    head_epochs = 10

    [grid]
    lr = [0.01, 0.1]
    lr_decay = [true, false]

Every error names the file and, where it can, the line.
"""

from __future__ import annotations

import itertools
import re
import sys
from pathlib import Path
from typing import Any

from tourbillon.config import Config, field_names, resolve
from tourbillon.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the project declares tomli for these versions
    import tomli as tomllib

TOP_LEVEL = ("base", "set", "grid")
NOT_GRID_FIELDS = ("name", "seed")


def load_grid(path: str | Path) -> dict[str, Any]:
    """Read a grid file.

    Returns:
        ``{"variant": name, "set": overrides, "base": Config, "grid":
        {field: [values]}}``; ``base`` is the variant with ``set`` applied.

    Raises:
        ConfigError: unreadable or invalid TOML, unknown keys, fields or
            variant, values that are not lists, or combinations that are
            invalid configs.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read grid file {path}: {error}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    where = _Locator(path, text)

    # Top-level keys, the base variant and its overrides.
    for key in data:
        if key not in TOP_LEVEL:
            raise ConfigError(f"{where(None, key)}: unknown key {key!r}; a grid file "
                              f"has {', '.join(TOP_LEVEL)}")
    variant = data.get("base", "reference")
    overrides = data.get("set", {})
    grid = data.get("grid")
    if not isinstance(variant, str):
        raise ConfigError(f"{where(None, 'base')}: base must be a variant name")
    for table, value in (("set", overrides), ("grid", grid)):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: needs a [{table}] table of field = value"
                              + (" (the grid is required)" if table == "grid" else ""))
    _check_fields(where, "set", overrides)
    _check_fields(where, "grid", grid)
    try:
        base = resolve(variant, overrides)
    except ConfigError as error:
        raise ConfigError(f"{where(None, 'base')}: {error}") from None

    # The values: non-empty lists whose every combination is a valid config.
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where('grid', name)}: {name} needs a non-empty "
                              f"list of values, e.g. {name} = [{values!r}]")
    _check_combinations(where, base, grid)
    return {"variant": variant, "set": overrides, "base": base, "grid": grid}


def _check_fields(where: "_Locator", table: str, values: dict[str, Any]) -> None:
    for name in values:
        if name not in field_names():
            raise ConfigError(f"{where(table, name)}: unknown config field {name!r} in "
                              f"[{table}]; known fields: {', '.join(field_names())}")
        if table == "grid" and name in NOT_GRID_FIELDS:
            raise ConfigError(f"{where(table, name)}: {name} cannot be a grid field "
                              "(seeds are replicates; names are set per cell)")


def _check_combinations(where: "_Locator", base: Config,
                        grid: dict[str, list[Any]]) -> None:
    fields = list(grid)
    for combo in itertools.product(*(grid[f] for f in fields)):
        changes = dict(zip(fields, combo))
        try:
            base.replace(**changes)
        except ConfigError as error:
            lines = ", ".join(where("grid", f) for f in fields)
            raise ConfigError(f"{lines}: the combination {changes} is an invalid "
                              f"config: {error}") from None


class _Locator:
    """``file:line`` of a key in a table of a TOML text (``file`` if not found)."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def __call__(self, table: str | None, key: str) -> str:
        current = None
        pattern = re.compile(rf"""^\s*["']?{re.escape(key)}["']?\s*=""")
        for n, line in enumerate(self.lines, 1):
            header = re.match(r"^\s*\[\s*([^\]]+?)\s*\]", line)
            if header:
                current = header.group(1)
                if table is None and current == key:  # a top-level table
                    return f"{self.path}:{n}"
            elif current == table and pattern.match(line):
                return f"{self.path}:{n}"
        return str(self.path)
