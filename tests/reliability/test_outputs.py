"""Outputs are not lost silently: every command whose --out holds results refuses an existing one (exit 2, one line
naming it) unless --overwrite is given, before any work; `stage_a-train --resume` without a checkpoint is exit 2
and leaves its run folder unlocked."""

from pathlib import Path

import pytest

from shared.clap_convert import main as clap_main
from shared.cli import refuse_overwrite
from shared.data.cli import main as data_main
from shared.data.schema import Sample, read_manifest, write_manifest
from shared.locks import folder_lock
from stage_a.eval_command import main as eval_main
from stage_a.train import main as train_main
from stage_b.outcomes import main as outcomes_main
from stage_b.train import main as policy_main


def _manifest(path: Path, ids: list[str]) -> Path:
    return write_manifest([Sample(i, "what color?", ("red",), "visual", "color", "vqav2", image=f"{i}.png")
                           for i in ids], path)


def _refused(capsys: pytest.CaptureFixture, prog: str, out: Path) -> None:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{prog}: ") and str(out) in err and "--overwrite" in err, err


def test_refuse_overwrite_accepts_new_and_empty_outputs_only(tmp_path: Path) -> None:
    refuse_overwrite(tmp_path / "new", overwrite=False)
    (tmp_path / "empty").mkdir()
    refuse_overwrite(tmp_path / "empty", overwrite=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match=r"--out .*full already holds \['metrics.json'\]; expected a new or empty"):
        refuse_overwrite(tmp_path / "full", overwrite=False)
    refuse_overwrite(tmp_path / "full", overwrite=True)


def test_merge_refuses_an_existing_manifest_unless_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = _manifest(tmp_path / "a.jsonl", ["a1"]), _manifest(tmp_path / "b.jsonl", ["b1"])
    out = _manifest(tmp_path / "mixed.jsonl", ["kept"])
    assert data_main(["merge", str(a), str(b), "--out", str(out)]) == 2
    _refused(capsys, "safe-data", out)
    assert [s.id for s in read_manifest(out, resolve_paths=False)] == ["kept"]
    assert data_main(["merge", str(a), str(b), "--out", str(out), "--overwrite"]) == 0
    assert [s.id for s in read_manifest(out, resolve_paths=False)] == ["a1", "b1"]


def test_convert_refuses_an_existing_manifest_before_reading_anything(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    out = _manifest(tmp_path / "gqa.jsonl", ["kept"])
    assert data_main(["convert", "gqa", "--questions", str(tmp_path / "missing.json"), "--images", str(tmp_path),
                      "--out", str(out)]) == 2
    _refused(capsys, "safe-data", out)


@pytest.mark.parametrize("command", ["stage_a-eval", "stage_b-outcomes", "stage_b-train", "safe-convert-clap"])
def test_result_outputs_are_refused_before_any_work(command: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    """Each command is pointed at inputs that do not exist beyond what it checks first: a refusal that came
    after loading anything would fail differently."""
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "kept.json").write_text("{}")
    table = tmp_path / "outcomes_test.npz"
    table.write_bytes(b"a finished table")
    bridge = tmp_path / "bridge"
    bridge.mkdir()
    (bridge / "adapter.safetensors").write_bytes(b"")
    run = {"stage_a-eval": lambda: eval_main(["--preset", "stage_a_micro", "--out", str(folder)]),
           "stage_b-outcomes": lambda: outcomes_main(["--checkpoint", str(bridge), "--preset", "stage_a_micro",
                                                        "--out", str(table)]),
           "stage_b-train": lambda: policy_main(["--table", str(tmp_path / "none.npz"), "--out", str(folder)]),
           "safe-convert-clap": lambda: clap_main([str(tmp_path / "none.pt"), "htsat-tiny", str(folder)])}[command]
    assert run() == 2
    _refused(capsys, command, table if command == "stage_b-outcomes" else folder)
    assert (folder / "kept.json").read_text() == "{}" and table.read_bytes() == b"a finished table"


def test_resume_without_a_checkpoint_is_exit_2_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert train_main(["--preset", "stage_a_micro", "--out_dir", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"stage_a-train: --resume: run folder {tmp_path / 'stage_a_micro'} "
                                                   "has no checkpoint to resume"), err
    with folder_lock(tmp_path / "stage_a_micro", "the test", wait=False):  # the failed run released its folder
        pass
