"""The bad-input battery: every console script, given broken files and arguments of each kind, exits 2 with one line
on stderr that starts with its name and names the input, prints no traceback, and leaves the good run, bridge,
outcome table and policy byte for byte as they were.

Cases run the scripts' `main` in-process (the console wrapper is the same code the installed scripts call);
`test_installed_scripts_answer_the_same_way` runs three of them as real processes."""

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from serve.answer import main as answer_main
from serve.cli import main as serve_main
from shared.clap_convert import main as clap_main
from shared.data.cli import main as data_main
from shared.world.cli import main as world_main
from stage_a.check import main as check_main
from stage_a.eval_command import main as eval_main
from stage_a.explain import main as explain_main
from stage_a.robust import main as robust_main
from stage_a.sweep import main as sweep_main
from stage_a.train import main as train_main
from stage_b.actor import ACTOR_FILE
from stage_b.evaluate import main as policy_eval_main
from stage_b.join import main as join_main
from stage_b.live import main as live_main
from stage_b.outcomes import main as outcomes_main
from stage_b.pareto import main as pareto_main
from stage_b.robust import main as policy_robust_main
from stage_b.train import PolicyConfig, train_policy
from stage_b.train import main as policy_main

MAINS: dict[str, Callable] = {
    "safe-world": world_main, "safe-data": data_main, "stage_a-check": check_main, "stage_a-train": train_main,
    "stage_a-eval": eval_main, "stage_a-sweep": sweep_main, "stage_a-robust": robust_main, "stage_a-explain": explain_main,
    "stage_b-outcomes": outcomes_main, "stage_b-robust": policy_robust_main,
    "stage_b-train": policy_main, "stage_b-eval": policy_eval_main, "stage_b-pareto": pareto_main,
    "stage_b-live": live_main, "stage_b-join": join_main, "safe-convert-clap": clap_main, "safe-answer": answer_main, "safe-serve": serve_main}


class Inputs:
    """Good artefacts (a trained micro run, its table and a policy) and broken copies made on demand in `tmp`."""

    def __init__(self, tmp: Path, micro_paths: dict[str, str], table: Path, policy: Path) -> None:
        self.tmp, self.paths, self.table, self.policy = tmp, micro_paths, table, policy
        self.run = table.parent
        self.world = [x for k, v in micro_paths.items() for x in (f"--{k}", v)]

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def truncated(self, source: Path, name: str) -> Path:
        return self.file(name, source.read_bytes()[: source.stat().st_size // 2])

    def bridge(self, damage: str) -> Path:
        """A copy of the run's best bridge with adapter.safetensors truncated, emptied or removed."""
        folder = self.tmp / f"bridge_{damage}"
        shutil.copytree(self.run / "best", folder)
        weights = folder / "adapter.safetensors"
        if damage == "missing":
            weights.unlink()
        else:
            weights.write_bytes(b"" if damage == "empty" else weights.read_bytes()[:100])
        return folder

    def run_copy(self, damage: str) -> Path:
        """A copy of the run folder (for --resume) with one checkpoint file damaged."""
        out = self.tmp / f"runs_{damage}"
        shutil.copytree(self.run, out / "stage_a_micro")
        target = out / "stage_a_micro" / "checkpoint" / damage
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
        return out

    def policy_copy(self, damage: str) -> Path:
        folder = self.tmp / f"policy_{damage}"
        shutil.copytree(self.policy, folder)
        if damage == "truncated":
            for name in (ACTOR_FILE, "policy.zip"):
                (folder / name).write_bytes((folder / name).read_bytes()[:64])
        if damage == "json":
            (folder / "policy.json").write_text("{not json")
        return folder

    def conditioned(self) -> Path:
        """A weight-conditioned policy (stage_b-train --weight-max 2, 64 steps) on the good table."""
        folder = self.tmp / "conditioned"
        train_policy(PolicyConfig(str(self.table), weight_max=2.0, timesteps=64, n_envs=1, eval_every=64), folder,
                     tensorboard=False)
        return folder

    def manifest(self, bad_line: str) -> Path:
        good = Path(self.paths["data.test"]).read_text().splitlines()[0]
        return self.file(f"manifest_{abs(hash(bad_line))}.jsonl", good + "\n" + bad_line + "\n")


# (script, arguments built from Inputs, a fragment the one-line message must contain)
Case = tuple[str, Callable[[Inputs], list[str]], Callable[[Inputs], str]]
CASES: dict[str, Case] = {
    # configs and flags, refused before any work
    "train lr nan": ("stage_a-train", lambda i: ["--preset", "stage_a_micro", "--lr", "nan"], lambda i: "lr is nan"),
    "train lr negative": ("stage_a-train", lambda i: ["--preset", "stage_a_micro", "--lr", "-1"], lambda i: "lr"),
    "train steps negative": ("stage_a-train", lambda i: ["--preset", "stage_a_micro", "--steps", "-5"], lambda i: "steps"),
    "train unknown key": ("stage_a-train", lambda i: ["--preset", "stage_a_micro", "--no_such_key", "1"],
                          lambda i: "no_such_key"),
    "train bad retention": ("stage_a-train", lambda i: ["--preset", "stage_a_micro", "--retention", "most"],
                            lambda i: "most"),
    "train bad dtype": ("stage_a-train", lambda i: ["--preset", "stage_a_micro", "--model.dtype", "float64"],
                        lambda i: "float64"),
    "train unknown preset": ("stage_a-train", lambda i: ["--preset", "no_such_preset"], lambda i: "no_such_preset"),
    "train stop-after negative": ("stage_a-train", lambda i: ["--preset", "stage_a_micro", "--stop-after", "-1"],
                                  lambda i: "--stop-after"),
    "train missing manifest": ("stage_a-train", lambda i: ["--preset", "stage_a_micro", *i.world, "--data.train",
                                                           str(i.tmp / "none.jsonl")], lambda i: "none.jsonl"),
    "train manifest line 5": ("stage_a-train", lambda i: ["--preset", "stage_a_micro", *i.world, "--out_dir",
                                                          str(i.tmp / "r5"), "--data.train", str(i.manifest("5"))],
                              lambda i: "expected a JSON object"),
    "train manifest line null": ("stage_a-train", lambda i: ["--preset", "stage_a_micro", *i.world, "--out_dir",
                                                             str(i.tmp / "rn"), "--data.train",
                                                             str(i.manifest("null"))],
                                 lambda i: "expected a JSON object"),
    "train missing model folder": ("stage_a-train", lambda i: ["--preset", "stage_a_micro", *i.world,
                                                               "--model.base_vl", "./no/such/model"],
                                   lambda i: "./no/such/model"),
    "train resume nothing": ("stage_a-train", lambda i: ["--preset", "stage_a_micro", "--out_dir", str(i.tmp / "e"),
                                                         "--resume"], lambda i: "no checkpoint"),
    "train resume truncated state": ("stage_a-train", lambda i: ["--preset", "stage_a_micro", *i.world, "--out_dir",
                                                                 str(i.run_copy("state.json")), "--resume"],
                                     lambda i: "state.json"),
    "train resume truncated optimizer": ("stage_a-train", lambda i: ["--preset", "stage_a_micro", *i.world,
                                                                     "--out_dir", str(i.run_copy("optimizer.pt")),
                                                                     "--resume"], lambda i: "optimizer.pt"),
    "train resume truncated adapter": ("stage_a-train", lambda i: ["--preset", "stage_a_micro", *i.world, "--out_dir",
                                                                   str(i.run_copy("adapter.safetensors")),
                                                                   "--resume"], lambda i: "adapter.safetensors"),
    "train existing run": ("stage_a-train", lambda i: ["--preset", "stage_a_micro", *i.world, "--out_dir",
                                                       str(i.run.parent)], lambda i: "--resume"),
    "eval ks item": ("stage_a-eval", lambda i: ["--preset", "stage_a_micro", "--ks", "4,x", "--out", str(i.tmp / "o.npz")], lambda i: "'x'"),
    "eval gate negative": ("stage_a-eval", lambda i: ["--preset", "stage_a_micro", "--gate", "-1"],
                           lambda i: "--gate"),
    "eval size negative": ("stage_a-eval", lambda i: ["--preset", "stage_a_micro", "--size", "-3"],
                           lambda i: "--size"),
    "eval missing data": ("stage_a-eval", lambda i: ["--preset", "stage_a_micro", "--data", str(i.tmp / "no.jsonl")],
                          lambda i: "no.jsonl"),
    "eval empty data": ("stage_a-eval", lambda i: ["--preset", "stage_a_micro", "--data", str(i.file("e.jsonl", ""))],
                        lambda i: "e.jsonl"),
    "eval csv data": ("stage_a-eval", lambda i: ["--preset", "stage_a_micro", "--data",
                                                 str(i.file("d.jsonl", "id,question\n1,what?\n"))],
                      lambda i: "d.jsonl"),
    "eval audio_start abc": ("stage_a-eval", lambda i: ["--preset", "stage_a_micro", *i.world, "--out",
                                                        str(i.tmp / "eo"), "--data",
                                                        str(i.manifest('{"id": "x", "question": "q?", "answers": '
                                                                       '["a"], "family": "audio", "qtype": "kind", '
                                                                       '"source": "world", "audio": "a.wav", '
                                                                       '"audio_start": "abc"}'))],
                             lambda i: "audio_start"),
    "eval missing bridge": ("stage_a-eval", lambda i: ["--preset", "stage_a_micro", "--checkpoint",
                                                       str(i.tmp / "nobridge")], lambda i: "nobridge"),
    "eval truncated bridge": ("stage_a-eval", lambda i: ["--preset", "stage_a_micro", *i.world, "--out",
                                                         str(i.tmp / "et"), "--checkpoint", str(i.bridge("truncated"))],
                              lambda i: "adapter.safetensors"),
    "eval empty bridge": ("stage_a-eval", lambda i: ["--preset", "stage_a_micro", *i.world, "--out", str(i.tmp / "ee"),
                                                     "--checkpoint", str(i.bridge("empty"))],
                          lambda i: "adapter.safetensors"),
    "eval existing out": ("stage_a-eval", lambda i: ["--preset", "stage_a_micro", "--out", str(i.run)],
                          lambda i: "--overwrite"),
    "robust size negative": ("stage_a-robust", lambda i: ["--checkpoint", str(i.run), "--size", "-1"],
                             lambda i: "--size"),
    "robust missing bridge": ("stage_a-robust", lambda i: ["--checkpoint", str(i.tmp / "nob3")], lambda i: "nob3"),
    "explain questions 0": ("stage_a-explain", lambda i: ["--checkpoint", str(i.run), "--questions", "0"],
                            lambda i: "--questions"),
    "explain missing bridge": ("stage_a-explain", lambda i: ["--checkpoint", str(i.tmp / "nob4")], lambda i: "nob4"),
    "policy robust bad corruption": ("stage_b-robust", lambda i: ["--policy", str(i.policy), "--corruptions",
                                                                  "noise-white-xdB"], lambda i: "noise-white-xdB"),
    "policy robust batch 0": ("stage_b-robust", lambda i: ["--policy", str(i.policy), "--batch-size", "0"],
                              lambda i: "--batch-size"),
    "check bad k": ("stage_a-check", lambda i: ["--k", "0"], lambda i: "--k"),
    "check missing base": ("stage_a-check", lambda i: ["--base-vl", "./no/such/vl"], lambda i: "./no/such/vl"),
    "check truncated bridge": ("stage_a-check", lambda i: ["--base-vl", i.paths["model.base_vl"], "--clap",
                                                           i.paths["model.clap"], "--bridge", str(i.bridge("truncated"))],
                               lambda i: "adapter.safetensors"),
    "check unknown fusion mode": ("stage_a-check", lambda i: ["--fusion-mode", "sideways"], lambda i: "sideways"),
    "sweep unknown preset": ("stage_a-sweep", lambda i: ["--preset", "no_such_sweep", "--merge"],
                             lambda i: "no_such_sweep"),
    "sweep task index": ("stage_a-sweep", lambda i: ["--preset", "k", "--task-index", "5", "--num-tasks", "2"],
                         lambda i: "--task-index"),
    "sweep nothing finished": ("stage_a-sweep", lambda i: ["--preset", "k", "--out", str(i.tmp / "sw"), "--merge"],
                               lambda i: "no finished cells"),
    "outcomes ks item": ("stage_b-outcomes", lambda i: ["--checkpoint", str(i.run), "--preset", "stage_a_micro",
                                                        "--ks", "4,x", "--out", str(i.tmp / "o.npz")], lambda i: "'x'"),
    "outcomes batch 0": ("stage_b-outcomes", lambda i: ["--checkpoint", str(i.run), "--preset", "stage_a_micro",
                                                        "--batch-size", "0", "--out", str(i.tmp / "o.npz")],
                         lambda i: "--batch-size"),
    "outcomes missing bridge": ("stage_b-outcomes", lambda i: ["--checkpoint", str(i.tmp / "nob"), "--preset",
                                                               "stage_a_micro"], lambda i: "nob"),
    "outcomes existing table": ("stage_b-outcomes", lambda i: ["--checkpoint", str(i.run), "--preset", "stage_a_micro",
                                                               "--out", str(i.table)], lambda i: "--overwrite"),
    "policy budget 1.5": ("stage_b-train", lambda i: ["--table", str(i.table), "--budget", "1.5"],
                          lambda i: "--budget"),
    "policy alpha negative": ("stage_b-train", lambda i: ["--table", str(i.table), "--alpha", "-1"],
                              lambda i: "alpha"),
    "policy n-envs 0": ("stage_b-train", lambda i: ["--table", str(i.table), "--n-envs", "0"], lambda i: "--n-envs"),
    "policy alpha word": ("stage_b-train", lambda i: ["--table", str(i.table), "--alpha", "lots"], lambda i: "lots"),
    "policy missing table": ("stage_b-train", lambda i: ["--table", str(i.tmp / "no.npz"), "--out", str(i.tmp / "p1")],
                             lambda i: "no.npz"),
    "policy empty table": ("stage_b-train", lambda i: ["--table", str(i.file("z.npz", b"")), "--out",
                                                       str(i.tmp / "p2")], lambda i: "z.npz"),
    "policy text table": ("stage_b-train", lambda i: ["--table", str(i.file("t.npz", "not a table")), "--out",
                                                      str(i.tmp / "p3")], lambda i: "t.npz"),
    "policy truncated table": ("stage_b-train", lambda i: ["--table", str(i.truncated(i.table, "half.npz")), "--out",
                                                           str(i.tmp / "p4")], lambda i: "half.npz"),
    "policy existing out": ("stage_b-train", lambda i: ["--table", str(i.table), "--out", str(i.policy)],
                            lambda i: "--overwrite"),
    "policy eval missing": ("stage_b-eval", lambda i: ["--policy", str(i.tmp / "nopolicy")], lambda i: "nopolicy"),
    "policy eval truncated": ("stage_b-eval", lambda i: ["--policy", str(i.policy_copy("truncated"))],
                              lambda i: ACTOR_FILE),
    "policy eval bad json": ("stage_b-eval", lambda i: ["--policy", str(i.policy_copy("json"))],
                             lambda i: "policy.json"),
    "policy weight-max negative": ("stage_b-train", lambda i: ["--table", str(i.table), "--weight-max", "-1"],
                                   lambda i: "--weight-max is -1.0"),
    "policy eval conditioned without weight": ("stage_b-eval", lambda i: ["--policy", str(i.conditioned())],
                                               lambda i: "expected --weight w in [0, 2]"),
    "policy eval weight for an ordinary policy": ("stage_b-eval", lambda i: ["--policy", str(i.policy), "--weight",
                                                                             "1"], lambda i: "expected no --weight"),
    "pareto eval-weights without conditioned": ("stage_b-pareto", lambda i: ["--table", str(i.table),
                                                                             "--eval-weights", "5"],
                                                lambda i: "--eval-weights 5 without --conditioned"),
    "live conditioned policy": ("stage_b-live", lambda i: ["--policy", str(i.conditioned())],
                                lambda i: "is a weight-conditioned policy"),
    "pareto alphas item": ("stage_b-pareto", lambda i: ["--table", str(i.table), "--alphas", "0.1,a"],
                           lambda i: "'a'"),
    "pareto seeds item": ("stage_b-pareto", lambda i: ["--table", str(i.table), "--seeds", "x"], lambda i: "'x'"),
    "pareto text table": ("stage_b-pareto", lambda i: ["--table", str(i.file("t2.npz", "text")), "--out",
                                                       str(i.tmp / "pa")], lambda i: "t2.npz"),
    "live questions 0": ("stage_b-live", lambda i: ["--policy", str(i.policy), "--questions", "0"],
                         lambda i: "--questions"),
    "live missing policy": ("stage_b-live", lambda i: ["--policy", str(i.tmp / "nolive")], lambda i: "nolive"),
    "join missing table": ("stage_b-join", lambda i: [str(i.table), str(i.tmp / "gone.npz"), "--out",
                                                      str(i.tmp / "j1.npz")], lambda i: "gone.npz"),
    "join one encoder twice": ("stage_b-join", lambda i: [str(i.table), str(i.table), "--out", str(i.tmp / "j2.npz")],
                               lambda i: str(i.table)),
    "join text table": ("stage_b-join", lambda i: [str(i.table), str(i.file("t3.npz", "text")), "--out",
                                                   str(i.tmp / "j3.npz")], lambda i: "t3.npz"),
    "join existing out": ("stage_b-join", lambda i: [str(i.table), str(i.table), "--out", str(i.table)],
                          lambda i: "--overwrite"),
    "data check line 5": ("safe-data", lambda i: ["check", str(i.manifest("5"))], lambda i: "expected a JSON object"),
    "data check audio_start abc": ("safe-data", lambda i: ["check", str(i.manifest(
        '{"id": "y", "question": "q?", "answers": ["a"], "family": "audio", "qtype": "kind", "source": "world", '
        '"audio": "a.wav", "audio_start": "abc"}'))], lambda i: "audio_start"),
    "data check min-duration nan": ("safe-data", lambda i: ["check", "m.jsonl", "--min-duration", "nan"],
                                    lambda i: "--min-duration"),
    "data check missing manifest": ("safe-data", lambda i: ["check", str(i.tmp / "gone.jsonl")],
                                    lambda i: "gone.jsonl"),
    "data merge seed without shuffle": ("safe-data", lambda i: ["merge", i.paths["data.test"], "--out",
                                                                str(i.tmp / "merged.jsonl"), "--seed", "1"],
                                        lambda i: "--shuffle"),
    "data merge existing out": ("safe-data", lambda i: ["merge", i.paths["data.val"], "--out", i.paths["data.test"]],
                                lambda i: "--overwrite"),
    "data convert missing file": ("safe-data", lambda i: ["convert", "gqa", "--questions", str(i.tmp / "q.json"),
                                                          "--images", str(i.tmp), "--out", str(i.tmp / "g.jsonl")],
                                  lambda i: "q.json"),
    "world bad number": ("safe-world", lambda i: ["info", "--world.seed", "x"], lambda i: "'x'"),
    "world unknown command": ("safe-world", lambda i: ["rebuild"], lambda i: "rebuild"),
    "clap missing checkpoint": ("safe-convert-clap", lambda i: [str(i.tmp / "none.pt"), "htsat-tiny",
                                                               str(i.tmp / "c1")], lambda i: "none.pt"),
    "clap truncated checkpoint": ("safe-convert-clap", lambda i: [str(i.file("half.pt", b"PK\x03\x04 truncated")),
                                                                 "htsat-tiny", str(i.tmp / "c2")],
                                  lambda i: "half.pt"),
    "answer k above k_max": ("safe-answer", lambda i: ["--bridge", str(i.run), "--question", "q?", "--k", "99"],
                             lambda i: "--k"),
    "answer both inputs": ("safe-answer", lambda i: ["--bridge", str(i.run), "--question", "q?", "--jsonl",
                                                     str(i.tmp / "q.jsonl")], lambda i: "--jsonl"),
    "answer bad jsonl": ("safe-answer", lambda i: ["--bridge", str(i.run), "--jsonl",
                                                   str(i.file("q2.jsonl", '{"question": "a?"}\n{"question": "b?\n'))],
                         lambda i: "q2.jsonl"),
    "answer missing bridge": ("safe-answer", lambda i: ["--bridge", str(i.tmp / "nob2"), "--question", "q?"],
                              lambda i: "nob2"),
    "answer truncated bridge": ("safe-answer", lambda i: ["--bridge", str(i.bridge("truncated")), "--question", "q?",
                                                          "--base", i.paths["model.base_vl"], "--clap",
                                                          i.paths["model.clap"]], lambda i: "adapter.safetensors"),
    "serve max-batch 0": ("safe-serve", lambda i: ["--bridge", str(i.run), "--max-batch", "0"],
                          lambda i: "--max-batch"),
    "serve missing policy": ("safe-serve", lambda i: ["--bridge", str(i.run), "--policy", str(i.tmp / "nop")],
                             lambda i: "nop"),
}


def _digest(paths: list[Path]) -> dict[str, str]:
    """sha256 of every file under `paths` (the good artefacts), by path."""
    files = [f for p in paths for f in (sorted(p.rglob("*")) if p.is_dir() else [p]) if f.is_file()]
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files if ".lock" not in f.name}


@pytest.fixture
def inputs(tmp_path: Path, micro_paths: dict[str, str], table_path: Path, policy_dir: Path,
           monkeypatch: pytest.MonkeyPatch) -> Inputs:
    monkeypatch.setenv("SAFE_LOG_DIR", str(tmp_path / "logs"))
    monkeypatch.chdir(tmp_path)
    return Inputs(tmp_path, micro_paths, table_path, policy_dir)


def test_the_battery_has_at_least_60_cases_over_every_console_script() -> None:
    assert len(CASES) >= 60
    assert {script for script, _, _ in CASES.values()} == set(MAINS)
    scripts = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(MAINS) == set(scripts), "every console script in pyproject.toml is in the battery"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_in_one_line_naming_it(name: str, inputs: Inputs, capsys: pytest.CaptureFixture) -> None:
    script, make_args, fragment = CASES[name]
    good = _digest([inputs.run, inputs.policy, Path(inputs.paths["data.test"])])
    args = make_args(inputs)
    try:
        code = MAINS[script](args)
    except SystemExit as exited:  # argparse's own usage errors
        code = exited.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and "it/s]" not in line]  # not tqdm bars
    assert code == 2, (name, code, err[-2000:])
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith(f"{script}: "), err[-2000:]
    assert fragment(inputs) in lines[0], (fragment(inputs), lines[0])
    assert _digest([inputs.run, inputs.policy, Path(inputs.paths["data.test"])]) == good, "a good file changed"
    assert not (inputs.tmp / "logs").exists(), "an internal-error log was written"


def test_installed_scripts_answer_the_same_way(tmp_path: Path) -> None:
    """The console entry points installed by pip: one line, exit 2, no traceback, as the in-process calls."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "SAFE_LOG_DIR": str(tmp_path)}
    for command, fragment in ((["stage_a-train", "--lr", "nan"], "lr is nan"),
                              (["stage_b-train", "--table", str(tmp_path / "none.npz"), "--budget", "1.5"], "--budget"),
                              (["safe-data", "check", str(tmp_path / "none.jsonl")], "none.jsonl")):
        done = subprocess.run([str(bin_dir / command[0]), *command[1:]], capture_output=True, text=True, env=env,
                              timeout=120)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (command, done.stderr)
        assert done.stderr.strip().count("\n") == 0 and fragment in done.stderr, done.stderr
