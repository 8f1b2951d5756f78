"""`stage_a-explain` end to end on a fresh micro-world bridge (non-zero W_out): explain.json, explain.md and the
figures; an existing --out is refused; bad numbers are named before anything loads; scene conditions."""

import json
from pathlib import Path

import pytest
import torch

from shared.config import load_config
from stage_a.config import TrainConfig
from stage_a.explain import main as explain_main
from stage_a.explanations import scene_conditions
from stage_a.setup import build_setup

FIGURES = ("attention_by_type.png", "occlusion_by_type.png", "faithfulness_curves.png")


def _args(paths: dict[str, str]) -> list[str]:
    return [x for k, v in paths.items() for x in (f"--{k}", v)]


@pytest.fixture(scope="module")
def bridge(micro_paths: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh SAFE bridge on the micro world with seeded non-zero fusion outputs, saved like a trained one."""
    setup = build_setup(load_config(TrainConfig, "stage_a_micro", micro_paths), splits=("test",))
    torch.manual_seed(3)
    with torch.no_grad():
        for block in setup.model.fusion.blocks.values():
            block.out.weight.normal_(0, 0.5)
    return setup.model.save_bridge(tmp_path_factory.mktemp("bridge") / "best")


def test_explain_writes_json_markdown_and_figures(bridge: Path, micro_paths: dict, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "explain"
    code = explain_main(["--checkpoint", str(bridge), "--preset", "stage_a_micro", *_args(micro_paths),
                         "--questions", "8", "--windows", "4", "--random-orders", "2", "--out", str(out)])
    data = json.loads((out / "explain.json").read_text())
    assert code == (1 if data["meta"]["target_met"] is False else 0)
    summary, records = data["summary"], data["questions"]
    assert data["meta"]["attributed"] >= 6 and len(records) > data["meta"]["attributed"]  # VL rows of the same draw
    assert {r["family"] for r in records} == {"audio", "audio_visual", "visual"}
    assert all(("attribution" in r) == (r["family"] != "visual") for r in records)
    assert set(summary["faithfulness"]["areas"]) == {f"{o}.{c}" for o in ("occlusion", "attention")
                                                     for c in ("deletion", "insertion")}
    for r in (r for r in records if "attribution" in r):  # the whole clip, at either end of the curves, is SAFE's answer
        faith = r["attribution"]["faithfulness"]["occlusion"]
        assert faith["deletion"]["curve"][0] == faith["insertion"]["curve"][-1] == r["safe"]["score"]
    first = next(r for r in records if "attribution" in r)["attribution"]
    assert len(first["occlusion"]) == len(first["attention"]) == len(first["windows_s"]) == 4
    assert set(summary["association_bias"]) >= {"source_visible", "distractors"}
    layers = next(iter(summary["layers"].values()))
    assert all(len(entry["attention"]) == 8 and "ci95" in entry["norm_answer"] for entry in layers.values())
    report = (out / "explain.md").read_text()
    for heading in ("relative update norm", "Attention over the audio tokens", "Faithfulness", "Spearman",
                    "Failure modes", "Association bias"):
        assert heading in report
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "target (occlusion deletion < random" in capsys.readouterr().out

    assert explain_main(["--checkpoint", str(bridge), "--preset", "stage_a_micro", *_args(micro_paths),
                         "--out", str(out)]) == 2
    assert "already holds" in capsys.readouterr().err and json.loads((out / "explain.json").read_text()) == data


@pytest.mark.parametrize("flags, named", [
    (["--questions", "0"], "--questions is 0; expected an integer >= 1"),
    (["--windows", "1"], "--windows is 1; expected an integer >= 2"),
    (["--random-orders", "0"], "--random-orders is 0; expected an integer >= 1"),
    (["--k", "17"], "--k is 17; expected None or an integer >= 1 and <= 16"),
])
def test_bad_numbers_are_named_before_anything_loads(bridge: Path, flags: list[str], named: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    args = ["--checkpoint", str(bridge), "--preset", "stage_a_micro", "--world", "no_such_world"]
    assert explain_main([*args, "--out", str(tmp_path / "out"), *flags]) == 2
    assert capsys.readouterr().err == f"stage_a-explain: {named}\n"
    assert not (tmp_path / "out").exists()


def _scene(objects: list[tuple[str, str]], kind: str = "tone") -> dict:
    return {"objects": [{"shape": s, "color": c} for s, c in objects],
            "events": [{"kind": kind, "pitch": "high", "repeats": 2}]}


def test_scene_conditions() -> None:
    assert scene_conditions(_scene([("circle", "red")])) == {
        "source_visible": True, "color_shared": False, "distractors": False, "several_candidates": False}
    assert scene_conditions(_scene([("circle", "red"), ("square", "red")])) == {
        "source_visible": True, "color_shared": True, "distractors": True, "several_candidates": False}
    assert scene_conditions(_scene([("square", "red")])) == {
        "source_visible": False, "color_shared": None, "distractors": False, "several_candidates": False}
    assert scene_conditions(_scene([("circle", "red"), ("circle", "blue")]))["several_candidates"] is True
