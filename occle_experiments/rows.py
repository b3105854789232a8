"""The experiment definition (``config/experiments.yaml``): protocol, rows and their config overrides."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_EXPERIMENTS = Path("config/experiments.yaml")
REQUIRED = ("base_config", "data_root", "results", "runs_dir", "protocol", "rows")
PROTOCOL_REQUIRED = ("train_sequences", "dev_sequences", "validation_sequences", "pilot")
PILOT_REQUIRED = ("rows", "seed", "steps", "eval_every", "plateau_window", "plateau_tolerance")


@dataclass
class Experiments:
    """A loaded ``experiments.yaml``; relative paths are relative to the working directory.

    Attributes:
        base_config: the training config every row overrides.
        data_root: dataset root (SemanticKITTI layout) of the rows without a ``data.root`` override.
        results: the results file (``docs/results.json``).
        runs_dir: parent of the run folders (``<runs_dir>/<row>/seed<k>``).
        protocol: the pre-registered protocol (sequences, pilot, row groups, success rule), recorded verbatim
            in the results file.
        common: overrides applied to every row before its own.
        rows: row name -> its overrides (``section.key=value``).
    """

    base_config: str
    data_root: str
    results: str
    runs_dir: str
    protocol: dict[str, Any]
    common: list[str]
    rows: dict[str, list[str]]

    def overrides(self, row: str, seed: int) -> list[str]:
        """All overrides of ``row`` with ``seed``: common, the row's own, then the paired seeds.

        Raises:
            ValueError: an unknown row (the message lists the known ones) or a negative seed.
        """
        if row not in self.rows:
            raise ValueError(f"unknown row {row!r}; rows: {', '.join(self.rows)}")
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        return [*self.common, *self.rows[row], f"train.seed={int(seed)}", f"data.label_seed={int(seed)}"]

    def row_setting(self, row: str, key: str, default: str) -> str:
        """The value the overrides of ``row`` give ``key`` (e.g. ``data.root``; the last one wins), else ``default``."""
        values = [o.partition("=")[2] for o in self.overrides(row, 0) if o.partition("=")[0] == key]
        return values[-1] if values else default

    def row_data_root(self, row: str) -> str:
        """The dataset root of ``row``: its ``data.root`` override, else the file's ``data_root``."""
        return self.row_setting(row, "data.root", self.data_root)

    def row_order(self) -> list[str]:
        """Rows in reporting order: the protocol's groups (core, curve, ablations), then the rest."""
        order: list[str] = []
        for group in ("core", "curve", "ablations"):
            for r in (self.protocol.get(group) or {}).get("rows", []):
                if r not in order:
                    order.append(r)
        return order + [r for r in self.rows if r not in order]


def _flatten(items: list[Any], where: str) -> list[str]:
    """Splice nested lists (YAML aliases) into one list of ``section.key=value`` strings."""
    out: list[str] = []
    for item in items:
        if isinstance(item, list):
            out += _flatten(item, where)
        elif isinstance(item, str) and "=" in item and "." in item.partition("=")[0]:
            out.append(item)
        else:
            raise ValueError(f"{where}: expected section.key=value overrides, got {item!r}")
    return out


def load_experiments(path: str | Path = DEFAULT_EXPERIMENTS) -> Experiments:
    """Read and check an experiments file.

    Raises:
        FileNotFoundError: no such file. ValueError: a missing key or a malformed row, naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiments file not found: {path}")
    doc = yaml.safe_load(path.read_text()) or {}
    missing = [k for k in REQUIRED if k not in doc]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}")
    protocol = dict(doc["protocol"] or {})
    missing = [k for k in PROTOCOL_REQUIRED if k not in protocol]
    if missing:
        raise ValueError(f"{path}: protocol is missing {missing}")
    missing = [k for k in PILOT_REQUIRED if k not in (protocol["pilot"] or {})]
    if missing:
        raise ValueError(f"{path}: protocol.pilot is missing {missing}")
    if not isinstance(doc["rows"], dict) or not doc["rows"]:
        raise ValueError(f"{path}: rows must be a mapping of row name -> list of overrides")
    rows = {str(name): _flatten(list(items or []), f"{path}: rows.{name}") for name, items in doc["rows"].items()}
    return Experiments(
        base_config=str(doc["base_config"]),
        data_root=str(doc["data_root"]),
        results=str(doc["results"]),
        runs_dir=str(doc["runs_dir"]),
        protocol=protocol,
        common=_flatten(list(doc.get("common") or []), f"{path}: common"),
        rows=rows,
    )
