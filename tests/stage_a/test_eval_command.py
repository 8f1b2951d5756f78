"""`stage_a-eval` on a micro-world run: predictions, metrics with CIs, the report, and the base alone."""

import json
from pathlib import Path

import dataclasses

import numpy as np
import pytest

from shared.data.schema import Sample, read_manifest, write_manifest
from shared.metrics import annotator_accuracy, cider_d, exact_match, gqa_accuracy, vqa_accuracy
from stage_a.eval_command import main as eval_main
from stage_a.train import main as train_main

FIELDS = {"id", "question", "answers", "family", "qtype", "source", "metric", "k", "gate", "raw", "answer", "score",
          "base_raw", "base_answer", "base_score"}
# Each dataset's official per-question scorer, applied independently to the written predictions.
OFFICIAL = {"world": vqa_accuracy, "vqav2": vqa_accuracy, "gqa": lambda p, a: gqa_accuracy(p, a[0]),
            "clotho_aqa": annotator_accuracy, "music_avqa": lambda p, a: exact_match(p, a[0])}
METRIC = {"world": "vqa_accuracy", "vqav2": "vqa_accuracy", "gqa": "gqa_exact_match",
          "clotho_aqa": "annotator_accuracy", "music_avqa": "type_accuracy"}


def _args(paths: dict[str, str]) -> list[str]:
    return [x for k, v in paths.items() for x in (f"--{k}", v)]


@pytest.fixture(scope="module")
def run_dir(micro_paths: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert train_main(["--preset", "stage_a_micro", "--out_dir", str(out), *_args(micro_paths)]) == 0
    return out / "stage_a_micro"


def test_checkpoint_eval_writes_predictions_metrics_and_report(run_dir: Path, micro_paths: dict,
                                                               capsys: pytest.CaptureFixture) -> None:
    assert eval_main(["--checkpoint", str(run_dir), "--preset", "stage_a_micro", *_args(micro_paths),
                      "--gate", "0.5", "--k", "4", "--report", "--ks", "4,8"]) == 0
    out = run_dir / "eval"
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert records and all(set(r) == FIELDS and r["k"] == 4 and r["gate"] == 0.5 for r in records)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall"]["n"] == len(records) and len(metrics["overall"]["ci95"]) == 2
    assert set(metrics["per_family"]) == {"audio", "audio_visual", "visual"}
    assert all("ci95" in v for v in metrics["per_qtype"].values())
    assert set(metrics["vs_base"]["overall"]) == {"paired", "mcnemar"}
    assert (out / "report.md").is_file() and (out / "accuracy_vs_k.png").is_file()
    assert "p (McNemar)" in capsys.readouterr().out


def test_base_model_alone_is_a_valid_subject(micro_paths: dict, tmp_path: Path) -> None:
    assert eval_main(["--preset", "stage_a_micro", *_args(micro_paths), "--out", str(tmp_path)]) == 0
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert all(r["score"] == r["base_score"] and r["raw"] == r["base_raw"] for r in records)
    assert json.loads((tmp_path / "metrics.json").read_text())["subject"] == "base model (no audio)"


def test_missing_checkpoint_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert eval_main(["--checkpoint", str(tmp_path), "--preset", "stage_a_micro"]) == 2
    assert f"stage_a-eval: --checkpoint {tmp_path}: no adapter.safetensors there" in capsys.readouterr().err


# Bad arguments are refused before anything loads: the world preset does not exist, so reaching it fails differently.
NO_WORLD = ["--preset", "stage_a_micro", "--world", "no_such_world"]


@pytest.mark.parametrize("flags, named", [
    (["--ks", "4,x"], "--ks is '4,x': item 'x' is not an integer >= 1 and <= 16"),
    (["--ks", "4,32"], "--ks is '4,32': item '32' is not an integer >= 1 and <= 16"),
    (["--k", "0"], "--k is 0; expected None or an integer >= 1 and <= 16"),
    (["--gate", "nan"], "--gate is nan; expected a finite number >= 0 and <= 1"),
    (["--size", "-5"], "--size is -5; expected an integer >= 0"),
    (["--caption-tokens", "0"], "--caption-tokens is 0; expected an integer >= 1"),
])
def test_bad_numbers_are_named_before_anything_loads(flags: list[str], named: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    assert eval_main([*NO_WORLD, "--out", str(tmp_path / "out"), *flags]) == 2
    assert capsys.readouterr().err == f"stage_a-eval: {named}\n"
    assert not (tmp_path / "out").exists()


def test_ks_are_checked_against_the_bridges_own_k_max(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "adapter.safetensors").write_bytes(b"")  # never loaded: the check reads only safe_config.json
    (tmp_path / "safe_config.json").write_text(json.dumps({"projector": {"k_max": 8}}))
    assert eval_main([*NO_WORLD, "--checkpoint", str(tmp_path), "--ks", "4,16"]) == 2
    assert "--ks is '4,16': item '16' is not an integer >= 1 and <= 8" in capsys.readouterr().err


@pytest.mark.parametrize("content, named", [
    (None, "does not exist; expected a JSONL manifest"),
    ("", "is empty; expected one JSON object per line"),
    ("\n  \n", "is empty; expected one JSON object per line"),
    ('[{"id": "a"}]\n', ':1: line is [{"id": "a"}]; expected a JSON object'),
    ("id,question\n", ":1: not valid JSON"),
    (b"\x89PNG\r\n\x1a\n\xff\xfe", "is not UTF-8 text"),
    ('{"id": "a"}\n', ":1: missing field(s)"),
])
def test_a_missing_or_malformed_data_file_is_named_before_anything_loads(content: str | bytes | None, named: str,
                                                                         tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "questions.jsonl"
    if isinstance(content, bytes):
        data.write_bytes(content)
    elif content is not None:
        data.write_text(content)
    assert eval_main([*NO_WORLD, "--data", str(data), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("stage_a-eval: ") and str(data) in err and named in err


def _relabelled(sample: Sample, i: int, base_answer: str) -> Sample:
    """World rows as other datasets: visual rows alternate VQAv2 (its 10 answers), GQA (1) and world; audio rows
    Clotho-AQA (3 annotators), MUSIC-AVQA (1) and AudioCaps captions (2 references, half of them holding the
    base answer). The single-answer datasets take the base model's own answer (generation never sees the
    answers), so their base scores are known: GQA 1, MUSIC-AVQA 1, Clotho-AQA 2/3."""
    if sample.family == "visual":
        source = ("vqav2", "gqa", "world")[i % 3]
    else:
        source = ("clotho_aqa", "music_avqa", "audiocaps")[i % 3]
    answers = {"vqav2": sample.answers, "world": sample.answers, "gqa": (base_answer,),
               "clotho_aqa": (base_answer, base_answer, f"not {base_answer}"), "music_avqa": (base_answer,),
               "audiocaps": (base_answer if i % 2 else "quiet noise", "a sound")}[source]
    family = "caption" if source == "audiocaps" else sample.family
    return dataclasses.replace(sample, id=f"{source}-{sample.id}", source=source, answers=answers, family=family)


@pytest.fixture(scope="module")
def mixed_manifest(micro_paths: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("base_eval")
    assert eval_main(["--preset", "stage_a_micro", *_args(micro_paths), "--out", str(out)]) == 0
    base = {r["id"]: r["base_answer"] for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
    samples = read_manifest(micro_paths["data.test"])
    return write_manifest([_relabelled(s, i, base[s.id]) for i, s in enumerate(samples)],
                          tmp_path_factory.mktemp("mixed") / "mixed.jsonl")


def test_mixed_manifest_reports_each_dataset_with_its_own_metric(run_dir: Path, micro_paths: dict,
                                                                 mixed_manifest: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    paths = {**micro_paths, "data.test": str(mixed_manifest)}
    capsys.readouterr()
    assert eval_main(["--checkpoint", str(run_dir), "--preset", "stage_a_micro", *_args(paths),
                      "--out", str(tmp_path), "--json", "--report"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "metrics.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    sources = {r["source"] for r in records}
    assert sources == {*OFFICIAL, "audiocaps"} and set(printed["per_dataset"]) == sources
    captions = [r for r in records if r["source"] == "audiocaps"]
    references = {r["id"]: r["answers"] for r in captions}
    corpus, _ = cider_d({r["id"]: r["answer"] for r in captions}, references)
    base_corpus, _ = cider_d({r["id"]: r["base_answer"] for r in captions}, references)
    entry = printed["per_dataset"].pop("audiocaps")
    assert entry["metric"] == "cider_d" and base_corpus > 0
    assert (entry["value"]["mean"], entry["base"]["mean"]) == pytest.approx((corpus, base_corpus))
    for source, entry in printed["per_dataset"].items():
        members = [r for r in records if r["source"] == source]
        for r in members:  # every question scored by its dataset's official scorer, recomputed here
            assert r["metric"] == METRIC[source]
            assert r["score"] == pytest.approx(OFFICIAL[source](r["answer"], r["answers"]))
            assert r["base_score"] == pytest.approx(OFFICIAL[source](r["base_answer"], r["answers"]))
        assert entry["metric"] == METRIC[source] and entry["n"] == len(members)
        assert entry["value"]["mean"] == pytest.approx(np.mean([r["score"] for r in members]))
        lo, hi = entry["value"]["ci95"]
        assert lo <= entry["value"]["mean"] <= hi
    # Known by construction (the single-answer datasets hold the base model's answer); VQA accuracy would give 0.
    base = {source: printed["per_dataset"][source]["base"]["mean"] for source in ("gqa", "music_avqa", "clotho_aqa")}
    assert base == pytest.approx({"gqa": 1.0, "music_avqa": 1.0, "clotho_aqa": 2 / 3})
    assert printed["overall"]["n"] == len(records) - len(captions)  # CIDEr-D is not averaged into accuracy
    report = (tmp_path / "report.md").read_text()
    assert "## Metric per dataset" in report and "GQA exact match" in report and "CIDEr-D" in report


def test_table_names_each_dataset_metric(micro_paths: dict, mixed_manifest: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    paths = {**micro_paths, "data.test": str(mixed_manifest)}
    assert eval_main(["--preset", "stage_a_micro", *_args(paths), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "p (McNemar)" in out
    for label in ("VQA accuracy", "GQA exact match", "accuracy (share of annotators)", "accuracy (per type)",
                  "CIDEr-D"):
        assert label in out


def test_single_answer_vqav2_is_an_error_naming_dataset_and_sample(micro_paths: dict, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    samples = read_manifest(micro_paths["data.test"])
    broken = [dataclasses.replace(s, source="vqav2") for s in samples]
    broken[0] = dataclasses.replace(broken[0], answers=broken[0].answers[:1])
    manifest = write_manifest(broken, tmp_path / "one_answer.jsonl")
    paths = {**micro_paths, "data.test": str(manifest)}
    assert eval_main(["--preset", "stage_a_micro", *_args(paths), "--out", str(tmp_path / "out")]) == 2
    assert f"stage_a-eval: dataset 'vqav2', sample '{broken[0].id}': 1 answer" in capsys.readouterr().err


def test_captions_are_generated_with_their_own_budget(micro_paths: dict, mixed_manifest: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.config import load_config
    from stage_a.config import TrainConfig
    from stage_a.evaluate import EvalSettings, generate_answers
    from stage_a.setup import build_setup

    cfg = load_config(TrainConfig, "stage_a_micro", {**micro_paths, "data.test": str(mixed_manifest)})
    setup = build_setup(cfg, splits=("test",))
    budgets: dict[str, set[int]] = {}
    real_generate = setup.model.generate

    def recording(**kwargs):
        out = real_generate(**kwargs)
        rows = kwargs["input_ids"].shape[0]
        budgets.setdefault("caption" if rows in caption_sizes else "question", set()).add(kwargs["max_new_tokens"])
        return out

    captions = [i for i, s in enumerate(setup.test.samples) if s.family == "caption"]
    questions = [i for i, s in enumerate(setup.test.samples) if s.family != "caption"]
    caption_sizes = {len(captions)}
    assert captions and len(questions) != len(captions)
    monkeypatch.setattr(setup.model, "generate", recording)
    settings = EvalSettings(batch_size=1000, max_new_tokens=2, caption_max_new_tokens=7)
    answers = generate_answers(setup.model, setup.collator, setup.test, captions + questions, settings)
    assert set(answers) == set(captions + questions)
    assert budgets == {"caption": {7}, "question": {2}}
