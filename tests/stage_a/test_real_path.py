"""The real path end to end on the micro world: `safe-world export`, the real converters, `safe-data check`
and `merge`, `stage_a-train` on the merged manifests and `stage_a-eval --json`, each dataset scored by its
own metric, no sample lost, and the converted questions scored as the native world's for the same bridge."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from shared.clap_convert import main as clap_main
from shared.clap_reference import prepare
from shared.config import load_config
from shared.data.cli import main as data_main
from shared.data.schema import Sample, majority_answer, read_manifest, write_manifest
from shared.dataset_metrics import metric_for
from shared.world.export import FORMATS
from shared.world.spec import SPLITS
from stage_a.checkpointing import bridge_folder
from stage_a.config import TrainConfig
from stage_a.data import Split, load_split
from stage_a.eval_command import main as eval_main
from stage_a.setup import Setup, build_setup, feature_cache
from stage_a.train import main as train_main

# Training mixes retention (VQAv2) with every audio dataset; GQA holds VQAv2's questions again, so it is
# evaluated only. The test split holds every format.
MIXES = {"train": ("vqav2", "audiocaps", "clotho_aqa", "music_avqa"),
         "val": ("vqav2", "audiocaps", "clotho_aqa", "music_avqa"),
         "test": FORMATS}
LAION_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "clap" / "laion_micro"
METRIC = {"vqav2": "vqa_accuracy", "gqa": "gqa_exact_match", "audiocaps": "cider_d",
          "clotho_aqa": "annotator_accuracy", "music_avqa": "type_accuracy"}


def _overrides(paths: dict[str, str]) -> list[str]:
    return [x for k, v in paths.items() for x in (f"--{k}", v)]


def _eval_json(run: Path, paths: dict[str, str], data: Path, out: Path) -> dict:
    """`stage_a-eval --json` of the run's bridge on `data`: the printed metrics and the predictions by id."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert eval_main(["--checkpoint", str(run), "--preset", "stage_a_micro", *_overrides(paths),
                          "--data", str(data), "--out", str(out), "--json"]) == 0
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return {"metrics": json.loads(printed.getvalue()), "records": records, "by_id": {r["id"]: r for r in records}}


@pytest.fixture(scope="module")
def real_path(micro_world: Path, converted_world: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Export, convert and check every format and split, merge, train a few steps, evaluate converted and native."""
    root = tmp_path_factory.mktemp("real_path")
    summary, converted = converted_world["summary"], converted_world["converted"]
    merged = {}
    for split, names in MIXES.items():
        merged[split] = root / f"mixed_{split}.jsonl"
        inputs = [str(converted_world["manifests"][name, split]) for name in names]
        assert data_main(["merge", *inputs, "--shuffle", "--seed", "0", "--out", str(merged[split])]) == 0
        assert data_main(["check", str(merged[split])]) == 0
    paths = {"model.base_vl": str(micro_world / "models" / "vl"), "model.clap": str(micro_world / "models" / "clap"),
             **{f"data.{split}": str(merged[split]) for split in SPLITS},
             "data.feature_cache": str(tmp_path_factory.mktemp("features"))}
    assert train_main(["--preset", "stage_a_micro", "--out_dir", str(root / "runs"), *_overrides(paths)]) == 0
    run = root / "runs" / "stage_a_micro"
    native_test = micro_world / "data" / "test.jsonl"
    return {"world": micro_world, "summary": summary, "converted": converted, "merged": merged, "paths": paths,
            "run": run, "native_test": native_test, "ids": converted_world["ids"],
            "eval": _eval_json(run, paths, merged["test"], root / "eval_converted"),
            "native_eval": _eval_json(run, paths, native_test, root / "eval_native")}


def _world_id(real_path: dict, name: str, sample: Sample) -> str:
    """The native world sample a converted test sample came from (world_ids.json of the export)."""
    if name == "clotho_aqa":
        key, of = (sample.meta["file_name"], sample.question), lambda r: (r["file_name"], r["question"])
    else:
        key, of = str(sample.meta["question_id"]), lambda r: str(r["question_id"])
    return {of(r): r["world_id"] for r in real_path["ids"][name]["test"]}[key]


def test_every_format_converts_checks_and_merges_without_loss(real_path: dict) -> None:
    world = {split: read_manifest(real_path["world"] / "data" / f"{split}.jsonl") for split in SPLITS}
    for (name, split), samples in real_path["converted"].items():
        part = real_path["summary"]["formats"][name]["splits"][split]
        assert len(samples) == part["questions"] + part["captions"] > 0, (name, split)
        assert part["questions"] + sum(part["not_exported"].values()) == len(world[split]), (name, split)
        assert {s.source for s in samples} == {name}
    for split, names in MIXES.items():
        sources = Counter(s.source for s in read_manifest(real_path["merged"][split]))
        assert sources == {name: len(real_path["converted"][name, split]) for name in names}, split


def test_training_reads_every_sample_of_the_merged_manifests(real_path: dict) -> None:
    summary = json.loads((real_path["run"] / "summary.json").read_text())
    assert summary["steps"] > 0 and summary["inputs"]["no_image_policy"] in ("text_only", "blank_image")
    for split, names in MIXES.items():
        assert summary["excluded"][split]["excluded"] == 0, split
        expected = {name: len(real_path["converted"][name, split]) for name in names}
        assert summary["inputs"][split]["sources"] == expected, split
    assert {name: entry["metric"] for name, entry in summary["per_dataset"].items()} == METRIC


def test_eval_json_reports_each_dataset_with_its_own_metric_and_every_question(real_path: dict) -> None:
    evaluated = real_path["eval"]
    per_dataset = evaluated["metrics"]["per_dataset"]
    assert set(per_dataset) == set(FORMATS)
    counted = Counter(r["source"] for r in evaluated["records"])
    for name, entry in per_dataset.items():
        n = len(real_path["converted"][name, "test"])
        assert (entry["metric"], entry["n"], counted[name]) == (METRIC[name], n, n), name
        assert isinstance(entry["value"]["mean"], float) and isinstance(entry["base"]["mean"], float), name
        assert all(r["metric"] == METRIC[name] for r in evaluated["records"] if r["source"] == name)


def _matched(real_path: dict, name: str) -> list[tuple[dict, dict]]:
    """(converted, native) prediction pairs of one dataset's test questions, with question and media checked equal."""
    native = real_path["native_eval"]["by_id"]
    pairs = [(real_path["eval"]["by_id"][s.id], native[_world_id(real_path, name, s)])
             for s in real_path["converted"][name, "test"]]
    assert len({n["id"] for _, n in pairs}) == len(pairs) > 0
    assert all(c["question"] == n["question"] for c, n in pairs)
    return pairs


def test_converted_questions_score_as_the_native_world_for_the_same_bridge(real_path: dict) -> None:
    """VQAv2 holds the world's question, image and 10 answers, but no audio: the base predictions and their
    VQA accuracy match the native world (with audio, a VQAv2 question borrows another clip of the manifest, so
    SAFE's gate-1 answer may differ). MUSIC-AVQA holds question, image (as frames) and audio: SAFE's gate-1
    predictions match the native world, and its metric is the native predictions scored against the majority."""
    per_dataset = real_path["eval"]["metrics"]["per_dataset"]
    vqa = _matched(real_path, "vqav2")
    assert all((c["answers"], c["base_raw"]) == (n["answers"], n["base_raw"]) for c, n in vqa)
    assert per_dataset["vqav2"]["base"]["mean"] == pytest.approx(sum(n["base_score"] for _, n in vqa) / len(vqa))
    for name, field in (("gqa", "base_answer"), ("music_avqa", "base_answer"), ("music_avqa", "answer")):
        pairs = _matched(real_path, name)
        assert all(c[field] == n[field] for c, n in pairs), (name, field)
        scores = [metric_for(name).score(n[field], [majority_answer(n["answers"])]) for _, n in pairs]
        value = per_dataset[name]["base" if field == "base_answer" else "value"]["mean"]
        assert value == pytest.approx(sum(scores) / len(scores)), (name, field)


def _last_logits(setup: Setup, split: Split, rows: list[int], k: int, audio: bool) -> torch.Tensor:
    """The bridge's next-token logits on rows of a split, with the rows' audio at gate 1 or without audio."""
    batch = setup.collator.prompt_batch(split, rows)
    kwargs = {"audio_frames": batch.frames, "frame_mask": batch.frame_mask, "k": k, "gate": 1.0} if audio else {}
    with torch.no_grad():
        return setup.model(**kwargs, **batch.inputs).logits[:, -1]


def test_the_bridge_gets_the_native_inputs_from_converted_samples(real_path: dict, tmp_path: Path) -> None:
    """Logits, not just greedy answers: the micro model's answers are mostly '' or 'no', so equal answers alone
    would not show that the converted samples carry the native pixels, audio and question."""
    cfg = load_config(TrainConfig, "stage_a_micro", real_path["paths"])
    setup = build_setup(cfg, splits=("test",), bridge_dir=bridge_folder(real_path["run"]))
    cache = feature_cache(setup.encoder, cfg.data.feature_cache)
    world = read_manifest(real_path["native_test"])
    # Clotho-AQA holds no image: its questions are the world's audio questions without their image.
    imageless = write_manifest([dataclasses.replace(s, image=None) for s in world if s.family == "audio"],
                               tmp_path / "world_audio_only.jsonl")
    native = {name: load_split(name, manifest, setup.encoder, cache, cfg.data.sample_rate, setup.processor)
              for name, manifest in (("with_media", real_path["native_test"]), ("imageless", imageless))}
    row = {split.name: {s.id: i for i, s in enumerate(split.samples)} for split in (setup.test, *native.values())}
    for name, kind, audio in (("vqav2", "with_media", False), ("gqa", "with_media", False),
                              ("music_avqa", "with_media", True), ("clotho_aqa", "imageless", True)):
        samples = real_path["converted"][name, "test"]
        rows = [row["test"][s.id] for s in samples]
        native_rows = [row[kind][_world_id(real_path, name, s)] for s in samples]
        got = _last_logits(setup, setup.test, rows, cfg.k_eval, audio)
        want = _last_logits(setup, native[kind], native_rows, cfg.k_eval, audio)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_a_converted_laion_clap_checkpoint_is_the_encoder_of_a_run_on_the_merged_manifests(
        real_path: dict, tmp_path: Path) -> None:
    """`safe-convert-clap` on a checkpoint written by laion-clap's own classes, then `stage_a-train --model.clap`."""
    checkpoint, config, _, _ = prepare(LAION_FIXTURE, tmp_path / "laion")
    assert clap_main([str(checkpoint), str(config), str(tmp_path / "clap")]) == 0
    paths = {**real_path["paths"], "model.clap": str(tmp_path / "clap"), "data.feature_cache": str(tmp_path / "cache")}
    assert train_main(["--preset", "stage_a_micro", "--out_dir", str(tmp_path / "runs"), *_overrides(paths),
                       "--steps", "2", "--eval_every", "2"]) == 0
    run = tmp_path / "runs" / "stage_a_micro"
    assert json.loads((run / "config.json").read_text())["model"]["clap"] == str(tmp_path / "clap")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and all(summary["excluded"][split]["excluded"] == 0 for split in SPLITS)
    assert {name: entry["metric"] for name, entry in summary["per_dataset"].items()} == METRIC
    assert {name: entry["n"] for name, entry in summary["per_dataset"].items()} == \
        {name: len(real_path["converted"][name, "test"]) for name in FORMATS}
