"""`stage_a-robust`: how SAFE degrades when its audio is noisy, masked, missing, mismatched or domain-shifted.

The setup is loaded once and the base model's answers without audio are computed once (the no-audio floor and
the VL reference). Then per condition SAFE answers the study's questions (a family-stratified --size subset of
the split) and each question is scored with its dataset's metric:
- clean: SAFE with the split's audio, every question;
- noise (white, babble, pink x 20 .. -10 dB) and time masks (25/50/75 %, contiguous or scattered): the clips
  are corrupted before the frozen encoder (shared.corruptions, stage_a.robust_conditions), on the audio and
  audio-visual questions only (VL questions do not need the audio);
- missing: every question without valid audio frames, in mixed batches beside questions with audio, compared
  with the bare base's answer question by question (the target: identical on 100 %);
- mismatched: every clip replaced by another scene's (a seeded derangement), with the AVHBench-style probe on
  world samples: how often the answer follows the wrong audio;
- shift-<name>: world variants (shared.world.variants, when available): SAFE and the base on the variant's split.
Results are reported per family and type with 95 % CIs and paired differences vs clean SAFE and vs the base
(stage_a.robust_report). Each condition is written to <out>/conditions/<name>.json as soon as it is done and a
rerun with the same settings skips finished conditions (resume); other settings are refused unless --overwrite,
which starts over. Final outputs: robustness.json, robustness.md and accuracy_vs_snr.png.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path

import platformdirs
import torch
from tqdm import tqdm

from shared.checkpoint import atomic_write_text
from shared.cli import ArgumentParser, InputError, add_overwrite_flag, check_number, console, name_list
from shared.config import load_config, parse_overrides
from shared.dataset_metrics import DatasetScorer, check_sample
from shared.logs import setup_logging
from shared.world.build import WorldConfig, read_record
from shared.world.generate import read_scenes
from stage_a.checkpointing import bridge_folder
from stage_a.config import TrainConfig
from shared.corruptions import STANDARD, parse_corruption
from stage_a.data import AUDIO_FAMILIES, Split, load_split
from stage_a.evaluate import EvalSettings, eval_rows, generate_answers
from stage_a.robust_conditions import (corrupted_split, implied_answers, mismatched_split, missing_audio_pass,
                                       probe_rates)
from stage_a.robust_report import markdown, plot_snr, summarize, targets
from stage_a.setup import Setup, build_setup, feature_cache

log = logging.getLogger(__name__)
FAMILIES = ("clean", "noise", "mask", "missing", "mismatched", "shift")
SPLITS = ("train", "val", "test")
DEFAULT_SIZE = 0  # the whole split: the default world test split runs in minutes (README)


def shift_grid() -> tuple[dict[str, dict], object, str | None]:
    """The world variants' SHIFTS and variant_split, or why they are unavailable."""
    try:
        from shared.world.variants import SHIFTS, variant_split
    except ImportError as err:
        return {}, None, f"shared.world.variants is not available ({err})"
    return SHIFTS, variant_split, None


class Study:
    """One loaded setup, its questions and the finished conditions of an output folder."""

    def __init__(self, setup: Setup, split_name: str, cfg: TrainConfig, size: int, seed: int, out: Path,
                 device: str, variant_root: Path) -> None:
        self.setup, self.split_name, self.cfg, self.size, self.seed = setup, split_name, cfg, size, seed
        self.split: Split = getattr(setup, split_name)
        self.rows = eval_rows(self.split, size, cfg.seed)
        self.audio_rows = [i for i in self.rows if self.split.samples[i].family in AUDIO_FAMILIES]
        self.settings = EvalSettings(k=cfg.k_eval, batch_size=cfg.eval_batch_size)
        self.out, self.device, self.variant_root = out, device, variant_root
        self.shifts, self.variant_split, self.shift_skipped = shift_grid()
        self.spec = load_config(WorldConfig, cfg.world).world
        world_dir = Path(setup.paths[split_name]).parent.parent
        built = read_record(world_dir).get("parts", {}).get("data", {}).get("hash")
        if self.shifts and built != self.spec.data_hash():
            self.shifts, self.shift_skipped = {}, (f"the {split_name} split is not of the world preset "
                                                   f"{cfg.world!r} (data hash in {world_dir}: {built})")
        same = [name for name, o in self.shifts.items() if all(getattr(self.spec, k) == v for k, v in o.items())]
        if same:
            log.warning("shifts %s leave this world's spec unchanged; skipped", same)
            self.shifts = {name: o for name, o in self.shifts.items() if name not in same}
        self.index = {s.id: i for i, s in enumerate(self.split.samples)}
        self.results: dict[str, dict] = {}

    def names(self, families: tuple[str, ...]) -> list[str]:
        """Condition names in run order: the base and clean references first."""
        names = ["base", "clean"]
        for c in STANDARD[1:]:
            if c.kind in families:
                names.append(c.name)
        names += [f for f in ("missing", "mismatched") if f in families]
        if "shift" in families:
            names += [f"shift-{s}" for s in self.shifts]
        return names

    def _answers(self, split: Split, rows: list[int], audio: bool) -> dict[int, str]:
        return generate_answers(self.setup.model, self.setup.collator, split, rows, self.settings, self.device,
                                audio=audio, gate=1.0)

    @staticmethod
    def records(split: Split, answers: dict[int, str], base: dict[int, str] | None = None) -> list[dict]:
        """One record per answered question: id, family, type, accuracy-scored, raw answer, score (and the base's)."""
        scorer = DatasetScorer([split.samples[i] for i in answers])
        out = []
        for i, raw in answers.items():
            s = split.samples[i]
            record = {"id": s.id, "family": s.family, "qtype": s.qtype, "accuracy": check_sample(s).accuracy,
                      "answer": raw, "score": scorer.score(s, raw)}
            if base is not None:
                record |= {"base_answer": base[i], "base_score": scorer.score(s, base[i])}
            out.append(record)
        return out

    def _scores(self, name: str) -> dict[str, float]:
        return {r["id"]: r["score"] for r in self.results[name]["records"]}

    def _finish(self, records: list[dict], **extra) -> dict:
        return {"records": records, "summary": summarize(records, self._scores("base"), self._scores("clean")), **extra}

    def compute(self, name: str) -> dict:
        """Run one condition."""
        if name == "base":
            return {"records": self.records(self.split, self._answers(self.split, self.rows, audio=False))}
        if name == "clean":
            records = self.records(self.split, self._answers(self.split, self.rows, audio=True))
            return {"records": records, "summary": summarize(records, self._scores("base"), None)}
        if name == "missing":
            return self._missing()
        if name == "mismatched":
            return self._mismatched()
        if name.startswith("shift-"):
            return self._shift(name.removeprefix("shift-"))
        corrupted = corrupted_split(self.split, parse_corruption(name), self.audio_rows, self.setup.encoder,
                                    self.cfg.data.feature_cache, self.cfg.data.sample_rate, self.seed)
        return self._finish(self.records(corrupted, self._answers(corrupted, self.audio_rows, audio=True)))

    def _missing(self) -> dict:
        run = missing_audio_pass(self.setup.model, self.setup.collator, self.split, self.rows, self.settings,
                                 self.device)
        records = self.records(self.split, run["missing"], run["base"])
        differ = [r["id"] for r in records if r["answer"] != r["base_answer"]]
        summary = {"n": len(records), "identical_answers": len(records) - len(differ),
                   "identical_scores": sum(r["score"] == r["base_score"] for r in records),
                   "present_differ": run["present_differ"], "differ_ids": differ[:20]}
        if differ:
            log.warning("missing audio: %d of %d answers differ from the bare base's (first: %s)", len(differ),
                        len(records), differ[:5])
        return self._finish(records, missing=summary)

    def _mismatched(self) -> dict:
        split, perm = mismatched_split(self.split, self.seed)
        answers = self._answers(split, self.rows, audio=True)
        result = self._finish(self.records(split, answers))
        scenes_file = Path(self.setup.paths[self.split_name]).parent / f"{self.split_name}.scenes.jsonl"
        if scenes_file.is_file():  # the probe runs on every audio-visual question of the split, not only --size's
            probe_rows = [i for i, s in enumerate(self.split.samples) if s.family == "audio_visual"]
            implied = implied_answers(self.split, probe_rows, perm, read_scenes(scenes_file.parent, self.split_name))
            rows = sorted(implied)
            base = {self.index[r["id"]]: r["answer"] for r in self.results["base"]["records"]}
            base |= self._answers(self.split, [i for i in rows if i not in base], audio=False)
            answers |= self._answers(split, [i for i in rows if i not in answers], audio=True)
            result["probe"] = {"questions": len(probe_rows), "safe": probe_rates(self.split, implied, answers),
                               "base": probe_rates(self.split, implied, base)}
        return result

    def _shift(self, shift: str) -> dict:
        overrides = self.shifts[shift]
        manifest = self.variant_split(self.spec, overrides, self.split_name, self.variant_root)
        cache = feature_cache(self.setup.encoder, self.cfg.data.feature_cache)
        split = load_split(f"{self.split_name}-{shift}", manifest, self.setup.encoder, cache, self.cfg.data.sample_rate,
                           self.setup.processor)
        rows = eval_rows(split, self.size, self.cfg.seed)
        base, safe = self._answers(split, rows, audio=False), self._answers(split, rows, audio=True)
        records = self.records(split, safe, base)
        return {"records": records, "overrides": overrides, "manifest": str(manifest),
                "summary": summarize(records, {r["id"]: r["base_score"] for r in records}, None)}

    def run(self, names: list[str]) -> None:
        """Every condition not yet in <out>/conditions, each written there as soon as it is done."""
        folder = self.out / "conditions"
        for name in tqdm(names, desc="conditions", unit="condition"):
            path = folder / f"{name}.json"
            if path.is_file():
                self.results[name] = json.loads(path.read_text(encoding="utf-8"))
                log.info("condition %s: done earlier, read from %s", name, path)
                continue
            start, cpu = time.perf_counter(), time.process_time()
            result = {"name": name, **self.compute(name)}
            result["seconds"] = round(time.perf_counter() - start, 1)
            result["cpu_seconds"] = round(time.process_time() - cpu, 1)  # CPU of all threads, spin-waiting included
            atomic_write_text(path, json.dumps(result))
            self.results[name] = result
            log.info("condition %s: %.1f s (%.1f s of CPU)", name, result["seconds"], result["cpu_seconds"])


def _check_out(out: Path, settings: dict, overwrite: bool) -> None:
    """Refuse an output folder that holds results of other settings, unless overwrite (checked before any work)."""
    record = out / "settings.json"
    same = record.is_file() and json.loads(record.read_text(encoding="utf-8")) == settings
    if not (overwrite or same) and out.exists() and any(out.iterdir()):
        held = "results of other settings" if record.is_file() else f"{sorted(p.name for p in out.iterdir())[:5]}"
        raise InputError(f"--out {out} already holds {held}; expected a new folder, the same settings (to resume) "
                         "or --overwrite to start over")


def _claim_out(out: Path, settings: dict, overwrite: bool) -> None:
    """Record the settings once the bridge has loaded, so a run refused at load leaves no folder to block a retry."""
    if overwrite:
        shutil.rmtree(out / "conditions", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "settings.json", json.dumps(settings, indent=2))


@console("stage_a-robust")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="stage_a-robust", description=__doc__.splitlines()[0],
                            epilog="Config keys of the preset can be overridden: --threads 1, --eval_batch_size 64 ...")
    parser.add_argument("--checkpoint", type=Path, required=True, help="bridge folder or stage_a-train run folder")
    parser.add_argument("--preset", default="stage_a", help="training preset naming the base model and data")
    parser.add_argument("--split", default="test", choices=SPLITS)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE,
                        help="a family-stratified subset of N questions (0: all; default: %(default)s)")
    parser.add_argument("--conditions", default=",".join(FAMILIES),
                        help=f"condition families to run, from {','.join(FAMILIES)} (base and clean always run)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corruptions and the derangement")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <checkpoint>/robustness)")
    add_overwrite_flag(parser, "its results (otherwise a rerun with the same settings resumes)")
    parser.add_argument("--variant-root", type=Path, default=None,
                        help="where world variants are written (default: the user cache's safe/world_variants)")
    parser.add_argument("--json", action="store_true", help="print robustness.json instead of the tables")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-v", "--verbose", action="store_true")
    args, rest = parser.parse_known_args(argv)
    setup_logging(args.verbose)
    check_number("--size", args.size, ge=0, integer=True)
    check_number("--seed", args.seed, ge=0, integer=True)
    families = name_list("--conditions", args.conditions, FAMILIES)
    cfg = load_config(TrainConfig, args.preset, parse_overrides(rest))
    try:
        bridge = bridge_folder(args.checkpoint)
    except FileNotFoundError as err:
        raise InputError(f"--checkpoint {err}") from err
    out = args.out or args.checkpoint / "robustness"
    settings = {"checkpoint": str(bridge.resolve()), "preset": args.preset, "overrides": rest, "split": args.split,
                "size": args.size, "row_seed": cfg.seed, "seed": args.seed, "k": cfg.k_eval}
    _check_out(out, settings, args.overwrite)
    if cfg.threads:  # --threads 1 beside other jobs: two torch threads on two busy cores spin far slower
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    setup = build_setup(cfg, args.device, splits=(args.split,), bridge_dir=bridge)
    _claim_out(out, settings, args.overwrite)
    variant_root = args.variant_root or Path(platformdirs.user_cache_dir("safe")) / "world_variants"
    study = Study(setup, args.split, cfg, args.size, args.seed, out, args.device, variant_root)
    with torch.no_grad():
        study.run(study.names(families))
    conditions = {name: {k: v for k, v in r.items() if k != "records"} for name, r in study.results.items()
                  if name != "base"}
    checks = targets(conditions)
    shown = {**settings, "questions": len(study.rows), "audio + audio-visual questions (noise, masks)":
             len(study.audio_rows), "seconds (this run)": round(time.perf_counter() - start, 1)}
    report = {"settings": shown, "targets": checks, "shift_skipped": study.shift_skipped, "conditions": conditions}
    atomic_write_text(out / "robustness.json", json.dumps(report, indent=2))
    text = markdown(shown, conditions, checks, study.shift_skipped)
    atomic_write_text(out / "robustness.md", text)
    plot_snr(conditions, out / "accuracy_vs_snr.png")
    print(json.dumps(report, indent=2) if args.json else text)
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
