"""Build the embedded world on disk, rebuilding only the parts whose spec changed.

A world folder holds:
    data/          images, clips and manifests (see generate.py)
    models/vl/     the base VL model (LLaVA architecture), saved with save_pretrained
    models/clap/   the audio encoder (CLAP architecture), saved with save_pretrained
    models/whisper/ a second audio encoder (Whisper architecture, a caption writer), saved with save_pretrained
    build.json     the build record: spec, the hash each part was built from, metrics, timings

Each part is keyed by a hash of everything it depends on; `build_world` redoes a part only
when its hash differs from the record (or its folder is missing), so an older world gains a new
part without rebuilding the rest. A build holds the world folder's lock (shared.locks): a second builder
of the same folder (another `safe-world build`, or a `stage_a-train` building its world) waits, then finds
the world up to date and reuses it. The data folder, each model folder and build.json are replaced
atomically (shared.checkpoint). The models train in two parallel processes, one thread each (at
this size a second thread gives a model nothing), longest first: the Whisper, the shortest, takes
the first process that is free. With `data_only` (`safe-world build --data-only`) only the data folder is built;
models trained on other data stay marked stale in the record until a full build retrains them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import platformdirs
import torch

from shared.checkpoint import atomic_directory, atomic_write_text
from shared.loading import load_json
from shared.locks import folder_lock
from shared.world.clap_train import ClapTrainConfig, train_clap
from shared.world.generate import generate_split
from shared.world.spec import SPLITS, WorldSpec, stable_hash
from shared.world.vl_train import VLTrainConfig, train_base_vl
from shared.world.whisper_train import WhisperTrainConfig, train_whisper

log = logging.getLogger(__name__)
WORLD_DIR_ENV = "SAFE_WORLD_DIR"
RECORD = "build.json"
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# The models, longest to train first (the order the two worker processes take them in).
MODELS = ("clap", "vl", "whisper")
TRAINERS = {"vl": train_base_vl, "clap": train_clap, "whisper": train_whisper}


@dataclass
class WorldConfig:
    """What `safe-world build` builds: the world spec and the three model recipes."""

    world: WorldSpec = field(default_factory=WorldSpec)
    vl: VLTrainConfig = field(default_factory=VLTrainConfig)
    clap: ClapTrainConfig = field(default_factory=ClapTrainConfig)
    whisper: WhisperTrainConfig = field(default_factory=WhisperTrainConfig)
    jobs: int = 2

    def __post_init__(self) -> None:
        if self.jobs not in (1, 2):
            raise ValueError(f"jobs is {self.jobs}; expected 1 (sequential) or 2 (models in parallel)")

    def part_hashes(self) -> dict[str, str]:
        data = self.world.data_hash()
        return {
            "data": data,
            "vl": stable_hash({"data": data, "recipe": asdict(self.vl)}),
            "clap": stable_hash({"data": data, "recipe": clap_recipe(self.clap)}),
            "whisper": stable_hash({"data": data, "recipe": asdict(self.whisper)}),
        }


def clap_recipe(cfg: ClapTrainConfig) -> dict:
    """The CLAP recipe its hash is taken over: without the mixture settings when there are no mixtures, so worlds
    built before mixture training existed keep their encoder."""
    recipe = asdict(cfg)
    if not cfg.mix_copies:
        recipe = {k: v for k, v in recipe.items() if not k.startswith("mix_")}
    return recipe


def default_world_dir(spec: WorldSpec, clap: ClapTrainConfig | None = None) -> Path:
    """$SAFE_WORLD_DIR, else a folder per size and seed in the user cache dir. A world with rendering shifts (reverb,
    pitch, tempo, timbre) gets its own folder, named with its data hash, and so does a world whose encoder trains on
    mixtures (named with its CLAP recipe's hash), so neither ever replaces the plain world."""
    if os.environ.get(WORLD_DIR_ENV):
        return Path(os.environ[WORLD_DIR_ENV])
    name = f"{spec.size}-seed{spec.seed}" + (f"-{spec.data_hash()[:12]}" if spec.rendering_shifts() else "")
    if clap is not None and clap.mix_copies:
        name += f"-clapmix-{stable_hash(clap_recipe(clap))[:8]}"
    return Path(platformdirs.user_cache_dir("safe")) / "world" / name


def read_record(world_dir: Path) -> dict:
    path = Path(world_dir) / RECORD
    if not path.is_file():
        return {}
    return load_json(path, "the build record written by `safe-world build`")


def _write_record(world_dir: Path, record: dict) -> None:
    atomic_write_text(world_dir / RECORD, json.dumps(record, indent=2, sort_keys=True))


def _stale_parts(config: WorldConfig, world_dir: Path, record: dict) -> list[str]:
    folders = {"data": world_dir / "data", **{part: world_dir / "models" / part for part in MODELS}}
    hashes = config.part_hashes()
    built = record.get("parts", {})
    return [p for p in hashes if built.get(p, {}).get("hash") != hashes[p] or not folders[p].is_dir()]


def _build_data(spec: WorldSpec, world_dir: Path) -> dict:
    start = time.perf_counter()
    with atomic_directory(world_dir / "data") as tmp:
        counts = {split: generate_split(spec, split, tmp) for split in SPLITS}
    return {"questions": counts, "seconds": round(time.perf_counter() - start, 1)}


def _train_part(part: str, data_dir: Path, out_dir: Path, spec: WorldSpec,
                recipe: VLTrainConfig | ClapTrainConfig | WhisperTrainConfig) -> dict:
    """Train one model in this process, single-threaded (the caller's thread count is restored); returns its metrics."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        metrics = TRAINERS[part](data_dir, out_dir, spec, recipe)
    finally:
        torch.set_num_threads(threads)
    metrics["wall_seconds"] = round(time.perf_counter() - start, 1)
    return metrics


@contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Spawned workers start with one BLAS/OpenMP thread (numpy's mel extraction included)."""
    saved = {k: os.environ.get(k) for k in _THREAD_VARS}
    os.environ.update({k: "1" for k in _THREAD_VARS})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build_world(config: WorldConfig, world_dir: Path | None = None, force: bool = False,
                data_only: bool = False) -> Path:
    """Build what is missing or stale (only the data with `data_only`), holding the folder's lock (a concurrent
    build is waited for); returns the world folder."""
    world_dir = Path(world_dir) if world_dir else default_world_dir(config.world, config.clap)
    with folder_lock(world_dir, "a world build", wait=True):
        return _build_locked(config, world_dir, force, data_only)


def _build_locked(config: WorldConfig, world_dir: Path, force: bool, data_only: bool) -> Path:
    record = {} if force else read_record(world_dir)
    stale = list(config.part_hashes()) if force else _stale_parts(config, world_dir, record)
    if data_only:
        stale = [p for p in stale if p == "data"]
    if not stale:
        log.info("world at %s is up to date", world_dir)
        return world_dir
    log.info("building world parts %s in %s", stale, world_dir)
    record.setdefault("parts", {})
    hashes = config.part_hashes()
    total = time.perf_counter()
    if "data" in stale:
        record["parts"]["data"] = {"hash": hashes["data"], **_build_data(config.world, world_dir)}
        # Models trained on other data are stale too.
        stale = sorted(set(stale) | set(MODELS))
        _write_record(world_dir, {**record, "spec": asdict(config.world)})
        if data_only:
            log.info("world data built at %s (models not trained: --data-only)", world_dir / "data")
            return world_dir
    models = [p for p in MODELS if p in stale]
    jobs = [(p, world_dir / "data", world_dir / "models" / p, config.world, getattr(config, p)) for p in models]
    if config.jobs == 2 and len(jobs) >= 2:
        with _single_threaded_children(), \
                ProcessPoolExecutor(max_workers=2, mp_context=get_context("spawn")) as pool:
            futures = {job[0]: pool.submit(_train_part, *job) for job in jobs}
            results = {p: f.result() for p, f in futures.items()}
    else:
        results = {job[0]: _train_part(*job) for job in jobs}
    for part, metrics in results.items():
        record["parts"][part] = {"hash": hashes[part], "recipe": asdict(getattr(config, part)), **metrics}
    record["spec"] = asdict(config.world)
    record["last_build_seconds"] = round(time.perf_counter() - total, 1)
    record["last_build_parts"] = stale
    _write_record(world_dir, record)
    log.info("world built in %.1f s at %s", record["last_build_seconds"], world_dir)
    return world_dir

