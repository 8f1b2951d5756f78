"""`safe-answer`: one question or a JSONL, JSON output, a policy choosing k, and exit 2 naming bad input."""

import json
from pathlib import Path

import pytest

from envs.outcome_table import OutcomeTable
from serve.answer import main as answer_main
from shared.config import load_config
from stage_a.config import TrainConfig
from stage_a.setup import build_setup


@pytest.fixture(scope="module")
def run_dir(table_path: Path) -> Path:
    return Path(OutcomeTable.load(table_path).provenance["checkpoint"])


@pytest.fixture(scope="module")
def split(run_dir: Path, micro_paths: dict[str, str]):
    return build_setup(load_config(TrainConfig, "stage_a_micro", micro_paths), splits=("test",), bridge_dir=run_dir).test


def _stderr_lines(capsys: pytest.CaptureFixture) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("safe-answer:")]


def test_one_question_and_a_jsonl_print_json(run_dir: Path, split, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    i = next(i for i, s in enumerate(split.samples) if s.family != "visual")
    clip, question = split.clip(i), split.samples[i].question
    args = ["--bridge", str(run_dir), "--question", question, "--json", "--image", split.visuals[i]]
    capsys.readouterr()
    assert answer_main([*args, "--audio", clip.path, "--k", "4"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"answer", "action", "gflops", "latency_ms"} and printed["action"] == {"audio": True, "k": 4}
    rows = tmp_path / "q.jsonl"
    rows.write_text("\n".join(json.dumps({"image": split.visuals[i], "audio": a, "question": question, "k": k})
                              for a, k in ((None, 2), (clip.path, 0))) + "\n")
    assert answer_main(["--bridge", str(run_dir), "--jsonl", str(rows), "--json"]) == 0
    assert [json.loads(line)["action"]["audio"] for line in capsys.readouterr().out.splitlines()] == [False, False]


def test_a_policy_chooses_k_unless_it_is_given(run_dir: Path, split, policy_dir: Path,
                                               capsys: pytest.CaptureFixture) -> None:
    rows = [i for i, s in enumerate(split.samples) if s.family != "visual"][:6]
    base = ["--bridge", str(run_dir), "--policy", str(policy_dir), "--json"]
    chosen = []
    for i in rows:
        question = ["--question", split.samples[i].question, "--image", split.visuals[i], "--audio", split.clip(i).path]
        capsys.readouterr()
        assert answer_main([*base, *question]) == 0
        chosen.append(json.loads(capsys.readouterr().out)["action"]["k"])
        assert answer_main([*base, *question, "--k", "8"]) == 0
        assert json.loads(capsys.readouterr().out)["action"]["k"] == 8
    assert set(chosen) <= {0, 4, 8}


@pytest.mark.parametrize("extra, message", [
    (["--k", "-1"], "safe-answer: --k is -1; expected an integer >= 0 and <= 16"),
    (["--k", "auto"], "safe-answer: k: 'auto' needs a Stage B policy"),
    (["--policy", "/no/such/policy"], "safe-answer: /no/such/policy/policy.json does not exist"),
])
def test_bad_input_exits_2_with_one_line(run_dir: Path, extra: list[str], message: str,
                                         capsys: pytest.CaptureFixture) -> None:
    capsys.readouterr()
    assert answer_main(["--bridge", str(run_dir), "--question", "what is it?", *extra]) == 2
    lines = _stderr_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(message), lines


def test_a_bad_jsonl_line_is_named(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = tmp_path / "q.jsonl"
    rows.write_text('{"question": "a?"}\n{"question": "b?", "kk": 3}\n')
    capsys.readouterr()
    assert answer_main(["--bridge", str(run_dir), "--jsonl", str(rows)]) == 2
    assert _stderr_lines(capsys) == [f"safe-answer: {rows} line 2: unexpected ['kk']; expected an object with keys "
                                     "image, audio, question, k"]
    rows.write_text('{"question": "a?"}\n\n{"question": "b?\n')
    assert answer_main(["--bridge", str(run_dir), "--jsonl", str(rows)]) == 2
    assert _stderr_lines(capsys) == [f"safe-answer: {rows}: not a readable JSON lines file (truncated or corrupt: "
                                     "Unterminated string starting at (line 3, column 14)); expected questions, one "
                                     "JSON object per line"]


@pytest.fixture
def fake_bridge(tmp_path: Path) -> Path:
    """A folder that passes for a bridge with k_max 8 (never loaded: the checks come first)."""
    (tmp_path / "adapter.safetensors").write_bytes(b"")
    (tmp_path / "safe_config.json").write_text(json.dumps({"projector": {"k_max": 8}}))
    return tmp_path


def test_k_and_model_paths_are_checked_before_anything_loads(fake_bridge: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    question = ["--bridge", str(fake_bridge), "--question", "what is it?"]
    assert answer_main([*question, "--k", "9"]) == 2
    assert capsys.readouterr().err == "safe-answer: --k is 9; expected an integer >= 0 and <= 8\n"
    assert answer_main([*question, "--base", "./no/such/base"]) == 2
    assert "safe-answer: --base is './no/such/base': no such folder, and not a hub id" in capsys.readouterr().err
    rows = tmp_path / "q.jsonl"
    rows.write_text('{"question": "a?", "k": 4}\n{"question": "b?", "k": 12}\n')
    assert answer_main(["--bridge", str(fake_bridge), "--jsonl", str(rows)]) == 2
    assert capsys.readouterr().err == f"safe-answer: {rows} question 2: k is 12; expected an integer >= 0 and <= 8\n"
    with pytest.raises(SystemExit) as exited:
        answer_main([*question, "--dtype", "float64"])
    assert exited.value.code == 2
