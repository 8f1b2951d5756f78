"""The exit-code convention: 0 success, 1 finding, 2 bad input in one line, 3 internal error with its traceback kept;
the number checks every command validates its input with."""

import json
from pathlib import Path

import pytest

from shared.cli import (EXIT_FINDING, EXIT_INPUT, EXIT_INTERNAL, EXIT_OK, InputError, check_keys, check_number,
                        console, is_input_error, name_list, number_list)
from shared.config import ConfigError


def _command(error: BaseException | None = None, code: int = EXIT_OK):
    @console("demo")
    def main(argv):
        if error is not None:
            raise error
        return code
    return main


@pytest.mark.parametrize("error", [
    InputError("manifest.jsonl line 3: field 'audio_start' is 'abc'; expected a number"),
    ConfigError("config key 'lr': value 'nan' is not valid; expected a finite float"),
    ValueError("--ks 4,x: 'x' is not an integer"),
    FileNotFoundError("no adapter.safetensors in runs/x"),
    FileNotFoundError(2, "No such file or directory", "data/missing.jsonl"),
    IsADirectoryError(21, "Is a directory", "runs"),
])
def test_bad_input_is_one_line_on_stderr_and_exit_2(error, capsys) -> None:
    assert _command(error)([]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("demo: ") and "Traceback" not in err
    if isinstance(error, OSError) and error.filename:
        assert error.filename in err


def test_a_multi_line_message_is_folded_into_one_line(capsys) -> None:
    assert _command(InputError("first line\n  second line"))([]) == EXIT_INPUT
    assert capsys.readouterr().err == "demo: first line second line\n"


def test_an_internal_error_is_exit_3_with_the_traceback_in_a_log_file(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SAFE_LOG_DIR", str(tmp_path))
    assert _command(RuntimeError("size mismatch for fusion.0.q"))([]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: RuntimeError: size mismatch" in err and "Traceback" not in err
    logs = list(tmp_path.glob("demo-*.log"))
    assert len(logs) == 1 and str(logs[0]) in err
    assert "Traceback" in logs[0].read_text() and "size mismatch" in logs[0].read_text()


def test_debug_prints_the_traceback_and_is_not_passed_on(capsys) -> None:
    seen = []

    @console("demo")
    def main(argv):
        seen.append(list(argv))
        raise KeyError("checkpoint")

    assert main(["--x", "1", "--debug"]) == EXIT_INTERNAL
    assert seen == [["--x", "1"]]
    assert "Traceback" in capsys.readouterr().err


def test_codes_returned_by_the_command_pass_through() -> None:
    assert _command(code=EXIT_FINDING)([]) == EXIT_FINDING
    assert _command(code=EXIT_OK)([]) == EXIT_OK


def test_which_errors_count_as_bad_input() -> None:
    assert is_input_error(json.JSONDecodeError("Expecting value", "x", 0))
    assert is_input_error(PermissionError(13, "Permission denied", "/root/x"))
    assert is_input_error(OSError(28, "No space left on device", "runs/x/state.json"))
    assert not is_input_error(OSError(5, "I/O error"))
    assert not is_input_error(RuntimeError("shape"))
    assert not is_input_error(KeyError("x"))


@pytest.mark.parametrize("value, bounds, message", [
    (float("nan"), {"gt": 0}, "lr is nan; expected a finite number > 0"),
    (float("inf"), {"ge": 0}, "lr is inf; expected a finite number >= 0"),
    (1.5, {"gt": 0, "le": 1}, "lr is 1.5; expected a finite number > 0 and <= 1"),
    (0, {"ge": 1, "integer": True}, "lr is 0; expected an integer >= 1"),
    (2.0, {"integer": True}, "lr is 2.0; expected an integer"),
    (True, {}, "lr is True; expected a finite number"),
    ("3", {}, "lr is '3'; expected a finite number"),
    (None, {"gt": 0}, "lr is None; expected a finite number > 0"),
    (-1.0, {"gt": 0, "optional": True}, "lr is -1.0; expected None or a finite number > 0"),
])
def test_check_number_names_the_value_and_the_range(value, bounds, message) -> None:
    with pytest.raises(InputError) as err:
        check_number("lr", value, **bounds)
    assert str(err.value) == message


def test_check_number_returns_what_is_in_range() -> None:
    assert check_number("lr", 1e-3, gt=0) == 1e-3 and check_number("k", 16, ge=1, le=16, integer=True) == 16
    assert check_number("budget", None, gt=0, le=1, optional=True) is None
    assert check_number("tolerance", -1.0) == -1.0


def test_number_list_parses_and_names_the_flag_and_the_bad_item() -> None:
    assert number_list("--ks", "4, 8,16,") == (4, 8, 16)
    assert number_list("--alphas", "0,1e-2", float, ge=0) == (0.0, 0.01)
    for text, item in (("4,x", "'x'"), ("4,0", "'0'"), ("4,2.5", "'2.5'")):
        with pytest.raises(InputError, match=f"^--ks is '{text}': item {item} is not an integer >= 1$"):
            number_list("--ks", text, ge=1)
    with pytest.raises(InputError, match="^--alphas is '0,nan': item 'nan' is not a finite number >= 0$"):
        number_list("--alphas", "0,nan", float, ge=0)
    with pytest.raises(InputError, match="^--seeds is ' , '; expected comma-separated values, each an integer$"):
        number_list("--seeds", " , ")


def test_name_list_parses_and_names_the_flag_and_the_bad_item() -> None:
    choices = ("supervised", "cascade", "bandit")
    assert name_list("--baselines", "bandit, supervised,,bandit", choices) == ("bandit", "supervised")
    assert name_list("--baselines", " none ", choices, none="none") == ()
    with pytest.raises(InputError, match=r"^--baselines is 'bandit,ridge': item 'ridge' is not one of \['supervised', "
                                         r"'cascade', 'bandit'\] \(or 'none' alone for none\)$"):
        name_list("--baselines", "bandit,ridge", choices, none="none")
    with pytest.raises(InputError, match="item 'none' is not one of"):
        name_list("--baselines", "none", choices)
    with pytest.raises(InputError, match="^--baselines is ' , '; expected comma-separated names, each one of"):
        name_list("--baselines", " , ", choices)


def test_check_keys_names_where_and_what_is_missing() -> None:
    record = {"split": "test", "preset": "stage_a"}
    assert check_keys("table t.npz provenance", record, ("split", "preset")) is record
    with pytest.raises(InputError, match=r"^table t\.npz provenance lacks 'checkpoint', 'actions'; expected the keys "
                                         r"\['split', 'checkpoint', 'actions'\]$"):
        check_keys("table t.npz provenance", record, ("split", "checkpoint", "actions"))


def test_a_usage_error_is_one_line_and_exit_2(capsys) -> None:
    from shared.cli import ArgumentParser

    parser = ArgumentParser(prog="demo")
    parser.add_argument("--k", type=int, required=True)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--k", "x"])
    assert exited.value.code == EXIT_INPUT
    assert capsys.readouterr().err == "demo: error: argument --k: invalid int value: 'x'; see demo --help\n"
