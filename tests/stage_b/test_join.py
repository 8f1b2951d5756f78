"""Encoder choice per question: two bridges' outcome tables joined (stage_b.join), charged per encoder by cost profiles,
swept by stage_b-pareto, and refused where one bridge is needed (live mode, serving)."""

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from envs.outcome_table import OutcomeTable
from stage_b import cost_profiles
from stage_b.chooser import PolicyChooser
from stage_b.cost_profiles import (
    EMBEDDED,
    PROFILE_DIR,
    action_parts,
    apply_cost_profile,
    load_profile,
)
from stage_b.evaluate import evaluate_policy, summarize
from stage_b.frontier import static_methods
from stage_b.join import join_files, join_tables
from stage_b.join import main as join_main
from stage_b.live import main as live_main
from stage_b.pareto import main as pareto_main
from stage_b.pareto import read_csv

PER_ENCODER = "llava-1.5-7b+clap-or-whisper"
NAMES = ["none", "clap-k4", "clap-k16", "whisper-k4", "whisper-k16"]


def bridge_table(encoder: str, n: int = 60, ks: tuple[int, ...] = (4, 16), repeats: int = 3) -> OutcomeTable:
    """One bridge's table over the same n questions: the frozen base's no-audio column, features, confidence and
    prompt lengths are shared (seeded alike), the audio actions are the bridge's own. Visual questions need no audio;
    CLAP answers 60 % of the audio questions, Whisper 90 % (with any k), and Whisper's encoder costs more."""
    base, own = np.random.default_rng(0), np.random.default_rng(len(encoder))
    family = np.array(["visual", "audio", "audio_visual"])[np.arange(n) % 3]
    a = 1 + len(ks)
    score = np.zeros((n, a), np.float32)
    score[:, 0] = family == "visual"
    score[:, 1:] = ((own.random(n) < (0.9 if encoder == "whisper" else 0.6)) | (family == "visual"))[:, None]
    gflops = np.array([1.0, *((5.0 if encoder == "whisper" else 2.0) + k / 100 for k in ks)], np.float32)
    timing = 1 + own.random((n, a, repeats)).astype(np.float32)
    timing[:, 0] = 1 + base.random((n, repeats))
    return OutcomeTable(ids=np.array([f"q{i}" for i in range(n)]), family=family, qtype=np.array(["kind"] * n),
                        actions=np.array([0, *ks]), score=score, gflops=np.tile(gflops, (n, 1)),
                        latency_ms=np.median(timing, axis=2), latency_repeats_ms=timing,
                        features=np.column_stack([family == "visual", base.normal(size=n)]).astype(np.float32),
                        confidence=base.random(n).astype(np.float32), text_tokens=9 + np.arange(n) % 5,
                        provenance={"split": "test", "checkpoint_hash": f"{encoder}-hash", "preset": "stage_a",
                                    "overrides": {"model.audio_encoder": encoder}, "checkpoint": f"runs/{encoder}"})


@pytest.fixture(scope="module")
def joined() -> OutcomeTable:
    return join_tables([("clap", bridge_table("clap")), ("whisper", bridge_table("whisper"))])


def test_the_join_is_no_audio_then_each_bridges_actions(joined: OutcomeTable, tmp_path: Path) -> None:
    clap, whisper = bridge_table("clap"), bridge_table("whisper")
    table = OutcomeTable.load(joined.save(tmp_path / "joined.npz"))
    assert table.action_labels == NAMES and table.actions.tolist() == [0, 4, 16, 4, 16]
    for key in ("score", "gflops", "latency_ms", "latency_repeats_ms"):
        expected = np.concatenate([getattr(clap, key), getattr(whisper, key)[:, 1:]], axis=1)
        np.testing.assert_array_equal(getattr(table, key), expected, err_msg=key)  # no audio: the first table's
    for key in ("features", "confidence", "text_tokens", "ids", "family"):
        np.testing.assert_array_equal(getattr(table, key), getattr(clap, key), err_msg=key)
    provenance = table.provenance
    assert provenance["checkpoint_hash"] == "clap:clap-hash+whisper:whisper-hash"
    assert [(j["encoder"], j["provenance"]["checkpoint"]) for j in provenance["joined"]] == [
        ("clap", "runs/clap"), ("whisper", "runs/whisper")]
    assert provenance["action_names"] == NAMES and provenance["no_audio_from"] == "clap"


def _renamed(table: OutcomeTable, row: int, new_id: str) -> OutcomeTable:
    ids = table.ids.copy()
    ids[row] = new_id
    return dataclasses.replace(table, ids=ids)


def _no_audio_flipped(table: OutcomeTable, row: int) -> OutcomeTable:
    score = table.score.copy()
    score[row, 0] = 1.0 - score[row, 0]
    return dataclasses.replace(table, score=score)


@pytest.mark.parametrize("damage, message", [
    (lambda t: _renamed(t, 7, "x7"), (r"the tables' question ids differ first at row 7: 'q7' in clap, 'x7' in whisper "
                                     r"\(60 and 60 rows\)")),
    (lambda t: t.subset(np.arange(50)), (r"the tables' question ids differ first at row 50: 'q50' in clap, no row in "
                                        r"whisper \(60 and 50 rows\)")),
    (lambda t: t.subset(np.roll(np.arange(60), 1)), (r"the tables' question ids differ first at row 0: 'q0' in clap, "
                                                    r"'q59' in whisper")),
    (lambda t: _no_audio_flipped(t, 5), (r"the no-audio score differs at question 'q5' \(row 5\): \[0\.0\] in clap, "
                                        r"\[1\.0\] in whisper; expected the same frozen base and questions")),
    (lambda t: dataclasses.replace(t, features=t.features + (np.arange(60) == 12)[:, None]),
     r"the feature row differs at question 'q12' \(row 12\)"),
    (lambda t: dataclasses.replace(t, confidence=None), (r"table whisper has no 'confidence' column and table clap "
                                                        r"has one; rebuild it with stage_b-outcomes")),
    (lambda t: dataclasses.replace(t, provenance={**t.provenance, "split": "val"}),
     r"table clap is of split 'test', whisper of 'val'; expected one split"),
    (lambda t: dataclasses.replace(t, latency_repeats_ms=None),
     r"table clap has 3 timed repeats per cell, whisper None"),
])
def test_a_join_of_other_questions_or_another_base_is_refused(damage, message: str) -> None:
    with pytest.raises(ValueError, match=rf"^{message}"):
        join_tables([("clap", bridge_table("clap")), ("whisper", damage(bridge_table("whisper")))])


def test_a_join_needs_distinct_encoders_and_unjoined_tables(joined: OutcomeTable) -> None:
    with pytest.raises(ValueError, match=r"^the tables' encoders are \['clap', 'clap'\]; expected two or more"):
        join_tables([("clap", bridge_table("clap")), ("clap", bridge_table("whisper"))])
    with pytest.raises(ValueError, match=r"^table joined already names its actions \['none', 'clap-k4'"):
        join_tables([("joined", joined), ("whisper", bridge_table("whisper"))])


def test_the_command_names_encoders_from_the_runs_config(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    clap, whisper = (bridge_table(e).save(tmp_path / f"{e}.npz") for e in ("clap", "whisper"))
    table = bridge_table("whisper")  # its run without the override: the preset's encoder, clap
    dataclasses.replace(table, provenance={**table.provenance, "overrides": {}}).save(tmp_path / "clap_config.npz")
    out = tmp_path / "joined.npz"
    assert join_main([str(clap), str(whisper), "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["actions"] == NAMES and OutcomeTable.load(out).provenance["joined"][1]["table"] == str(whisper)
    assert join_main([str(clap), str(whisper), "--out", str(out)]) == 2  # the joined table exists
    assert join_main([str(clap), str(tmp_path / "clap_config.npz"), "--out", str(tmp_path / "two.npz")]) == 2
    assert "come from runs of encoders ['clap', 'clap']; expected one table per encoder" in capsys.readouterr().err
    _renamed(OutcomeTable.load(whisper), 3, "x3").save(whisper)
    assert join_main([str(clap), str(whisper), "--out", str(tmp_path / "three.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "question ids differ first at row 3: 'q3' in clap, 'x3' in whisper" in err


@pytest.mark.parametrize("base", ["llava-1.5-7b", "llava-1.5-13b"])
def test_a_per_encoder_profile_charges_each_action_its_own_encoder(joined: OutcomeTable, base: str) -> None:
    """clap-k<k> as the CLAP profile counts it, whisper-k<k> as the Whisper one, no audio alike in both; charging
    CLAP on a Whisper action would undercount it by Whisper-large-v3's encoder (~2.3 TFLOPs)."""
    per_encoder = f"{base}+clap-or-whisper"
    profiled = apply_cost_profile(joined, per_encoder)
    clap, whisper = (load_profile(f"{base}+{e}") for e in ("clap-htsat", "whisper-large-v3"))
    for a, (name, k) in enumerate(zip(NAMES, joined.actions.tolist())):
        member = whisper if name.startswith("whisper") else clap
        expected = [sum(action_parts(member, k, int(t)).values()) for t in joined.text_tokens]
        np.testing.assert_allclose(profiled.gflops[:, a], expected, rtol=1e-6, err_msg=name)
    assert [sum(action_parts(m, 0, 12).values()) for m in (clap, whisper)] == pytest.approx(
        [profiled.gflops[3, 0]] * 2, rel=1e-9)  # no audio: the same base and LoRA through either bridge
    gap = profiled.gflops[:, 3] - profiled.gflops[:, 1]  # whisper-k4 minus clap-k4
    assert (gap > 2000).all()
    assert profiled.provenance["cost_profile"]["encoders"]["whisper"]["encoder"] == "openai/whisper-large-v3"
    prefix = apply_cost_profile(joined, f"{per_encoder}-prefix")
    assert (prefix.gflops[:, 1:] > profiled.gflops[:, 1:]).all()  # k prefix positions through every layer
    assert np.array_equal(apply_cost_profile(joined, EMBEDDED).gflops, joined.gflops)  # each action's own measurement


def test_profiles_refuse_a_table_whose_encoders_they_cannot_charge(joined: OutcomeTable) -> None:
    with pytest.raises(ValueError, match=re.escape("go through the encoders ['clap', 'whisper'], but cost profile "
                                                   "'llava-1.5-7b+clap-htsat' charges one encoder")):
        apply_cost_profile(joined, "llava-1.5-7b+clap-htsat")
    with pytest.raises(ValueError, match=r"do not name an encoder \(one bridge, as stage_b-outcomes writes it\)"):
        apply_cost_profile(bridge_table("clap"), PER_ENCODER)
    other = join_tables([("clap", bridge_table("clap")), ("beats", bridge_table("whisper"))])
    with pytest.raises(ValueError, match=re.escape("use the encoders ['beats'], which cost profile "
                                                   f"'{PER_ENCODER}' does not charge; it knows ['clap', 'whisper']")):
        apply_cost_profile(other, PER_ENCODER)


def test_a_per_encoder_profile_of_two_bases_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for path in PROFILE_DIR.glob("*.yaml"):
        shutil.copy(path, tmp_path)
    data = yaml.safe_load((PROFILE_DIR / f"{PER_ENCODER}.yaml").read_text())
    data["encoders"]["clap"] = "llava-1.5-13b+clap-htsat"
    (tmp_path / "mixed.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setattr(cost_profiles, "PROFILE_DIR", tmp_path)
    with pytest.raises(ValueError, match=r"mixed\.yaml: encoders\.whisper \(llava-1\.5-7b\+whisper-large-v3, base "
                                         r"llava-hf/llava-1\.5-7b-hf\) and encoders\.clap .* differ in base"):
        cost_profiles.load_profile.__wrapped__("mixed")


@pytest.fixture(scope="module")
def sweep(joined: OutcomeTable, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny alpha sweep on the joined table with every baseline (it has the confidence for the cascade)."""
    root = tmp_path_factory.mktemp("joined_sweep")
    table = joined.save(root / "outcomes_test.npz")
    assert pareto_main(["--table", str(table), "--out", str(root / "out"), "--seeds", "0", "--components", "alpha",
                        "--alphas", "0,0.5", "--timesteps", "512", "--n-envs", "2", "--workers", "1"]) == 0
    return root / "out"


def test_pareto_names_static_policies_by_action(sweep: Path) -> None:
    rows = read_csv(sweep / "pareto.csv")
    static = [r["method"] for r in rows if r["method"].startswith(("never", "always-"))]
    assert static == ["never", *(f"always-{name}" for name in NAMES[1:])]
    report = json.loads((sweep / "pareto.json").read_text())
    cascade = report["baselines"]["cascade"]
    assert (cascade["action"], cascade["k"]) == ("whisper-k4", 4)  # the best audio score, ties to fewer tokens
    assert report["reference"]["method"] == "always-whisper-k16"


def test_eval_histograms_name_actions_and_live_and_serving_refuse(sweep: Path, capsys: pytest.CaptureFixture) -> None:
    policy = sweep / "policies" / "alpha-w0-seed0"
    result = evaluate_policy(policy)
    assert set(result["actions"]["audio"]) <= set(NAMES) and sum(result["actions"]["audio"].values()) > 0
    capsys.readouterr()
    assert live_main(["--policy", str(policy)]) == 2  # before SAFE is loaded
    assert "joins several bridges (actions ['none', 'clap-k4'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"a pipeline serves one bridge"):
        PolicyChooser.load(policy)


def test_an_unnamed_table_keeps_its_method_names_and_histogram_keys() -> None:
    """A stage_b-outcomes table (one bridge, no names): always-k<k> and k<k> as before names existed."""
    table = bridge_table("clap", ks=(4, 8, 16))
    assert static_methods(table.action_labels) == ["never", "always-k4", "always-k8", "always-k16"]
    histogram = summarize(table, np.arange(6), np.array([0, 3, 1, 3, 2, 0]))["actions"]
    assert histogram["visual"] == {"k0": 1, "k16": 1} and histogram["audio"] == {"k16": 1, "k8": 1}


def test_the_micro_worlds_whisper_bridge_joins_its_clap_bridge(table_path: Path, micro_paths: dict[str, str],
                                                               micro_world: Path, tmp_path: Path) -> None:
    """End to end: a Whisper bridge on the micro world's frozen base, its outcome table (the encoder timed and
    counted on its own full window), joined with the CLAP bridge's: the same no-audio answers, both bridges' actions."""
    from stage_a.train import main as train_main
    from stage_b.outcomes import main as outcomes_main

    args = [x for k, v in micro_paths.items() for x in (f"--{k}", v)]
    args += ["--model.whisper", str(micro_world / "models" / "whisper"), "--model.audio_encoder", "whisper"]
    assert train_main(["--preset", "stage_a_micro", "--out_dir", str(tmp_path), "--name", "whisper", *args]) == 0
    assert outcomes_main(["--checkpoint", str(tmp_path / "whisper"), "--preset", "stage_a_micro", "--ks", "4,8",
                          "--batch-size", "32", *args]) == 0
    whisper = tmp_path / "whisper" / "outcomes_test.npz"
    encoder = OutcomeTable.load(whisper).provenance["flops_check"]["encoder"]
    assert encoder["analytic"] == pytest.approx(encoder["profiler"], rel=1e-9) and encoder["analytic"] > 0
    table = join_files([table_path, whisper])
    assert table.action_labels == ["none", "clap-k4", "clap-k8", "whisper-k4", "whisper-k8"]
    assert [j["encoder"] for j in table.provenance["joined"]] == ["clap", "whisper"]
