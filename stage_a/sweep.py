"""`stage_a-sweep`: a grid of `stage_a-train` cells × seeds, run in parallel processes, merged into tables.

A sweep preset (configs/sweep_*.yaml) names the training preset, the seeds, overrides common to
all cells, one override set per cell and the default cell every other cell is compared with.
`worlds` (optional) names world presets (e.g. world, world_seed1): every cell then runs on each of
these independently built worlds, so the tables show the spread a new build brings, not only seeds.
Each (cell, seed) is one `stage_a-train` process writing runs/sweeps/<sweep>/cells/<cell>-seed<s>
(<cell>-<world>-seed<s> when the sweep names worlds);
finished cells are skipped and interrupted ones resumed, so a sweep can be re-run after a crash.
`--task-index I --num-tasks N` runs only cells I, I+N, ... (one cell per task in a SLURM job
array); `--merge` then collects every finished cell. A failing cell is reported in FAILED.txt
and in the tables, and does not stop the others.

results.md / results.csv / results.json: per cell, means ± std over runs (seeds, or world × seed),
95% hierarchical-bootstrap CIs (runs resampled, then questions within each run; stage_a/sweep_tables.py),
per-world means when there are worlds, and the comparison with the default cell, run paired with the
same world and seed and question with question (hierarchical-bootstrap
difference CI and p-value, McNemar only for a single paired seed, Welch's t over seed means).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.checkpoint import atomic_write_text, readable_folder
from shared.cli import ArgumentParser, InputError, check_number, console
from shared.config import PRESET_DIR, ConfigError, load_config
from shared.logs import setup_logging
from stage_a.config import TrainConfig
from stage_a.sweep_tables import merge_cells, render_markdown

log = logging.getLogger(__name__)


@dataclass
class SweepConfig:
    """A grid of training overrides × seeds (× worlds, when named); `default` names the reference cell.

    Empty `worlds` keeps the training preset's world.
    """

    name: str
    train_preset: str = "stage_a"
    seeds: tuple[int, ...] = (0, 1, 2)
    worlds: tuple[str, ...] = ()
    common: dict[str, Any] = field(default_factory=dict)
    cells: dict[str, dict[str, Any]] = field(default_factory=dict)
    default: str = ""
    criteria: bool = False

    def __post_init__(self) -> None:
        if not self.cells:
            raise ValueError(f"sweep {self.name!r} has no cells; expected a mapping of cell name to overrides")
        if self.default not in self.cells:
            raise ValueError(f"sweep default is {self.default!r}; expected one of the cells {sorted(self.cells)}")
        if not self.seeds:
            raise ValueError(f"sweep {self.name!r} has no seeds; expected at least one")
        for seed in self.seeds:
            check_number("sweep seed", seed, ge=0, integer=True)


@dataclass(frozen=True)
class Cell:
    """One training run of the sweep."""

    label: str
    seed: int
    preset: str
    overrides: tuple[tuple[str, str], ...]
    world: str = ""

    @property
    def name(self) -> str:
        return f"{self.label}-{self.world}-seed{self.seed}" if self.world else f"{self.label}-seed{self.seed}"


def cells_of(sweep: SweepConfig) -> list[Cell]:
    """Every (cell, world, seed), in a fixed order: cells in preset order, then worlds, seeds inner.

    A cell's `preset` key replaces the sweep's training preset for that cell (e.g. a baseline preset).
    """
    out = []
    for label, overrides in sweep.cells.items():
        values = dict(overrides or {})
        preset = str(values.pop("preset", sweep.train_preset))
        for world in sweep.worlds or ("",):
            for seed in sweep.seeds:
                where = {"world": world} if world else {}
                merged = {**sweep.common, **values, **where, "seed": seed, "mix.seed": seed}
                out.append(Cell(label, seed, preset, tuple((k, v if isinstance(v, str) else json.dumps(v))
                                                           for k, v in merged.items()), world))
    return out


def check_cells(cells: list[Cell]) -> None:
    """Every cell's training config loads (its preset, overrides and ranges) before any cell process starts."""
    for cell in cells:
        try:
            load_config(TrainConfig, cell.preset, dict(cell.overrides))
        except ConfigError as err:
            raise InputError(f"sweep cell {cell.name}: {err}") from err


def run_cell(cell: Cell, cells_dir: Path, threads: int) -> dict:
    """Run one cell as a `stage_a-train` process; skip it when finished, resume it when interrupted."""
    run_dir = cells_dir / cell.name
    if (run_dir / "summary.json").is_file():
        return {"cell": cell.name, "status": "done before"}
    command = [sys.executable, "-m", "stage_a.train", "--preset", cell.preset, "--out_dir", str(cells_dir),
               "--name", cell.name, "--threads", str(threads), *[x for k, v in cell.overrides for x in (f"--{k}", v)]]
    if readable_folder(run_dir / "checkpoint").is_dir():
        command.append("--resume")
    log.info("cell %s: %s", cell.name, " ".join(command[2:]))
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "FAILED.txt", f"exit {done.returncode}\n{' '.join(command)}\n\n{done.stderr[-5000:]}")
        log.error("cell %s failed (exit %d); see %s", cell.name, done.returncode, run_dir / "FAILED.txt")
        return {"cell": cell.name, "status": f"failed (exit {done.returncode})"}
    (run_dir / "FAILED.txt").unlink(missing_ok=True)
    return {"cell": cell.name, "status": "ran"}


def write_tables(sweep: SweepConfig, out_dir: Path) -> dict:
    """Merge every finished cell into results.csv and results.md; returns the merged table."""
    table = merge_cells(sweep, cells_of(sweep), out_dir / "cells")
    buffer = io.StringIO()
    flat = [{key: value for key, value in row.items() if key != "per_qtype"} for row in table["rows"]]  # in the JSON
    writer = csv.DictWriter(buffer, fieldnames=list(flat[0]))
    writer.writeheader()
    writer.writerows(flat)
    atomic_write_text(out_dir / "results.csv", buffer.getvalue())
    atomic_write_text(out_dir / "results.md", render_markdown(sweep, table))
    atomic_write_text(out_dir / "results.json", json.dumps({**table, "common": sweep.common}, indent=2))
    return table


@console("stage_a-sweep")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="stage_a-sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="retention",
                        help="sweep preset: NAME for configs/sweep_NAME.yaml, a preset name or a YAML path")
    parser.add_argument("--out", type=Path, default=None, help="sweep folder (default: runs/sweeps/<name>)")
    parser.add_argument("--jobs", type=int, default=2, help="cells run in parallel processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per cell")
    parser.add_argument("--task-index", type=int, default=None, help="run only cells I, I+N, ... (job arrays)")
    parser.add_argument("--num-tasks", type=int, default=1)
    parser.add_argument("--merge", action="store_true", help="only merge finished cells into the tables")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="override a training key in every cell, e.g. --set steps 500")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    for flag, value, low in (("--jobs", args.jobs, 1), ("--threads", args.threads, 0), ("--num-tasks", args.num_tasks, 1)):
        check_number(flag, value, ge=low, integer=True)  # --threads 0: torch's default
    check_number("--task-index", args.task_index, ge=0, lt=args.num_tasks, integer=True, optional=True)
    setup_logging(args.verbose)
    short = PRESET_DIR / f"sweep_{args.preset}.yaml"  # `--preset baselines` means configs/sweep_baselines.yaml
    sweep = load_config(SweepConfig, short if short.is_file() else args.preset)
    sweep.common = {**sweep.common, **dict(args.set)}
    out_dir = args.out or Path("runs") / "sweeps" / sweep.name
    cells = cells_of(sweep)
    if not args.merge:
        check_cells(cells)
        if args.task_index is not None:
            cells = cells[args.task_index::args.num_tasks]
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            statuses = list(pool.map(lambda c: run_cell(c, out_dir / "cells", args.threads), cells))
        for status in statuses:
            log.info("%s: %s", status["cell"], status["status"])
        if args.task_index is not None:
            return 0 if all(not s["status"].startswith("failed") for s in statuses) else 1
    table = write_tables(sweep, out_dir)
    print(render_markdown(sweep, table))
    return 0 if not table["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
