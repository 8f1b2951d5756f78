"""Named actions in the outcome table: (encoder, k) pairs validated, round-tripped and labelled; unnamed tables as
before."""

from pathlib import Path

import numpy as np
import pytest

from envs.audio_budget import AudioBudgetEnv
from envs.outcome_table import OutcomeTable

NAMES = ["none", "clap-k4", "clap-k16", "whisper-k4", "whisper-k16"]
KS = [0, 4, 16, 4, 16]


def named_table(n: int = 12, names: list[str] | None = NAMES, ks: list[int] = KS, seed: int = 0) -> OutcomeTable:
    """A table of n questions and the actions `ks`, named `names` (None: unnamed), with every optional column."""
    rng = np.random.default_rng(seed)
    a = len(ks)
    repeats = (1 + rng.random((n, a, 3))).astype(np.float32)
    return OutcomeTable(ids=np.array([f"q{i}" for i in range(n)]), family=np.array(["audio"] * n),
                        qtype=np.array(["kind"] * n), actions=np.array(ks), score=rng.random((n, a)),
                        gflops=1 + rng.random((n, a)), latency_ms=np.median(repeats, axis=2),
                        latency_repeats_ms=repeats, features=rng.normal(size=(n, 2)),
                        provenance={"split": "test"}, confidence=rng.random(n), text_tokens=np.arange(n) + 9,
                        action_names=None if names is None else np.array(names))


def test_named_actions_round_trip_and_label_every_reader(tmp_path: Path) -> None:
    table = named_table()
    loaded = OutcomeTable.load(table.save(tmp_path / "joined.npz"))
    assert loaded.action_names.tolist() == NAMES and loaded.actions.tolist() == KS  # k 4 and 16 twice each
    assert loaded.action_labels == NAMES
    assert loaded.action_encoders == ["", "clap", "clap", "whisper", "whisper"]
    part = loaded.subset(np.array([3, 1]))
    assert part.action_names.tolist() == NAMES and part.score.tolist() == table.score[[3, 1]].tolist()
    env = AudioBudgetEnv(loaded, episode_length=2)
    env.reset(options={"order": [0, 1]})
    info = env.step(3)[-1]
    assert (info["action_taken"], info["k"], info["action_name"]) == (3, 4, "whisper-k4")
    assert info["gflops"] == pytest.approx(table.gflops[0, 3])


def test_an_unnamed_table_is_labelled_by_k_as_before(tmp_path: Path) -> None:
    table = OutcomeTable.load(named_table(names=None, ks=[0, 4, 8, 16]).save(tmp_path / "old.npz"))
    assert table.action_names is None and table.action_encoders is None
    assert table.action_labels == ["k0", "k4", "k8", "k16"]
    env = AudioBudgetEnv(table, episode_length=1)
    env.reset(options={"order": [0]})
    assert env.step(3)[-1]["action_name"] == "k16"
    with np.load(tmp_path / "old.npz") as data:
        assert "action_names" not in data.files  # an unnamed table's file is written as before
    with pytest.raises(ValueError, match=r"'actions' = \[0, 4, 4\], expected distinct token counts >= 0"):
        named_table(names=None, ks=[0, 4, 4])


@pytest.mark.parametrize("names, ks, match", [
    (["none", "clap-k4", "clap-k4"], [0, 4, 4], r"'action_names' = .* names 'clap-k4' twice; expected distinct"),
    (["k0", "clap-k4", "whisper-k4"], [0, 4, 4], r"'action_names'\[0\] = 'k0', expected 'none' \(action 0"),
    (["none", "clap-k4", "whisper-k8"], [0, 4, 4], (r"'action_names'\[2\] = 'whisper-k8' with 'actions'\[2\] = 4; "
                                                   r"expected '<encoder>-k4'")),
    (["none", "clap_k4", "whisper-k4"], [0, 4, 4], r"'action_names'\[1\] = 'clap_k4' .* expected '<encoder>-k4'"),
    (["none", "Clap-k4", "whisper-k4"], [0, 4, 4], r"'action_names'\[1\] = 'Clap-k4'"),
    (["none", "clap-k0", "whisper-k4"], [0, 0, 4], (r"'action_names'\[1\] = 'clap-k0' with 'actions'\[1\] = 0; "
                                                   r"expected '<encoder>-k0' \(lower-case encoder, k >= 1")),
    (["none", "clap-k4"], [0, 4, 4], r"'action_names' has shape \(2,\) dtype <U7, expected \(3,\) unicode"),
])
def test_bad_action_names_are_named(names: list[str], ks: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=rf"^OutcomeTable: {match}"):
        named_table(names=names, ks=ks)


def test_bad_names_in_a_file_are_named_with_the_file(tmp_path: Path) -> None:
    path = named_table().save(tmp_path / "joined.npz")
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    np.savez(tmp_path / "bad.npz", **{**arrays, "action_names": np.array(["none", *NAMES[1:4], "whisper-k4"])})
    with pytest.raises(ValueError, match=rf"^outcome table {tmp_path / 'bad.npz'}: 'action_names' = .* names "
                                         r"'whisper-k4' twice"):
        OutcomeTable.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "numbers.npz", **{**arrays, "action_names": np.arange(5)})
    with pytest.raises(ValueError, match=r"'action_names' has shape \(5,\) dtype int64, expected \(5,\) unicode"):
        OutcomeTable.load(tmp_path / "numbers.npz")
