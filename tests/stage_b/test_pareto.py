"""`stage_b-pareto` on a toy table: a real process pool, the csv, resume, failures, the plot, bad arguments."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from envs.outcome_table import OutcomeTable
from shared.loading import file_sha256
from stage_b.evaluate import SavedPolicy, summarize
from stage_b.pareto import COLUMNS, ParetoConfig, main, read_csv, run_sweep

TINY = ["--timesteps", "512", "--n-envs", "2", "--workers", "2", "--alphas", "0,0.5"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def table_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Visual questions need no audio, audio questions need it; audio costs 4-6x the no-audio answer."""
    n, rng = 60, np.random.default_rng(0)
    family = np.array(["visual", "audio", "audio_visual"])[np.arange(n) % 3]
    score = np.ones((n, 4), np.float32)
    score[family != "visual", 0] = 0.0
    score[rng.random(n) < 0.2, 1] = 0.0
    features = np.column_stack([family == "visual", rng.normal(size=n)]).astype(np.float32)
    gflops = np.tile(np.array([1.0, 4.0, 5.0, 6.0], np.float32), (n, 1))
    table = OutcomeTable(ids=np.array([f"q{i}" for i in range(n)]), family=family, qtype=np.array(["kind"] * n),
                         actions=np.array([0, 4, 8, 16]), score=score, gflops=gflops, latency_ms=10 * gflops,
                         features=features, provenance={"split": "toy"})
    return table.save(tmp_path_factory.mktemp("table") / "outcomes_toy.npz")


@pytest.fixture(scope="module")
def sweep_out(table_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every component, seed 0, default baselines: the toy table has no confidence, so the cascade is skipped."""
    out = tmp_path_factory.mktemp("sweep")
    assert main(["--table", str(table_path), "--out", str(out), "--seeds", "0", *TINY]) == 0
    return out


def test_csv_has_exact_columns_and_every_method(sweep_out: Path, table_path: Path) -> None:
    assert (sweep_out / "pareto.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    rows = read_csv(sweep_out / "pareto.csv")
    methods = {r["method"] for r in rows}
    assert methods == {"never", "always-k4", "always-k8", "always-k16", "oracle", "oracle-frontier",
                       *(f"{kind}-{c}" for kind in ("ppo", "random", "supervised", "bandit")
                         for c in ("alpha", "gamma", "both"))}
    for kind in ("supervised", "bandit"):  # the PPO policies' weights and seeds
        learned = [r for r in rows if r["method"].startswith(f"{kind}-")]
        assert sorted((r["method"], r["alpha"], r["gamma"], r["seed"]) for r in learned) == sorted(
            (r["method"].replace("ppo", kind), r["alpha"], r["gamma"], r["seed"]) for r in rows
            if r["method"].startswith("ppo-"))
    ppo = [r for r in rows if r["method"].startswith("ppo-")]
    assert len(ppo) == 6 and {(r["alpha"], r["gamma"]) for r in ppo} == {(0, 0), (0.5, 0), (0, 0.5), (0.5, 0.5)}
    for row in rows:
        if row["method"] in ("never", "always-k4", "oracle"):
            assert row["alpha"] is None and row["gamma"] is None and row["seed"] is None
    for policy in ppo:  # a random baseline permutes its policy's actions: the same audio rate
        twin = next(r for r in rows if r["method"] == policy["method"].replace("ppo", "random")
                    and (r["alpha"], r["gamma"]) == (policy["alpha"], policy["gamma"]))
        assert twin["audio_rate"] == policy["audio_rate"]
    static = {r["method"]: r for r in rows if r["alpha"] is None}
    assert static["never"]["gflops_per_query"] == 1.0 and static["always-k16"]["gflops_per_query"] == 6.0
    table = OutcomeTable.load(table_path)
    held_out = json.loads((sweep_out / "policies" / "alpha-w0-seed0" / "policy.json").read_text())["test_rows"]
    frontier = [r for r in rows if r["method"] == "oracle-frontier"]
    assert frontier[0]["alpha"] == 0 and frontier[0]["accuracy"] == pytest.approx(table.score[held_out].max(1).mean())
    assert static["oracle"]["accuracy"] == pytest.approx(1.0) and frontier[-1]["audio_rate"] == 0.0


def test_json_and_png(sweep_out: Path) -> None:
    report = json.loads((sweep_out / "pareto.json").read_text())
    assert report["n"] == 18 and report["rows"] == "held-out" and report["table_provenance"] == {"split": "toy"}
    assert report["reference"]["gflops_per_query"] == 6.0
    learned = [f"{kind}-{c}" for kind in ("ppo", "supervised", "bandit") for c in ("alpha", "gamma", "both")]
    assert set(report["hypervolume"]) == {*learned, "static", "random", "oracle", "oracle-frontier"}
    assert set(report["hypervolume_ratio_to_oracle"]) == set(report["hypervolume_per_seed"]) == set(learned)
    assert all(0 < ratio <= 1.0 + 1e-9 for ratio in report["hypervolume_ratio_to_oracle"].values())
    assert report["hypervolume_per_seed"]["supervised-alpha"]["n"] == 1  # one seed: no interval
    assert report["hypervolume_per_seed"]["supervised-alpha"]["ci95"] is None
    versus = report["ppo_minus_baseline_hypervolume"]
    assert set(versus) == {f"{kind}-{c}" for kind in ("supervised", "bandit") for c in ("alpha", "gamma", "both")}
    assert set(versus["bandit-gamma"]) == {"ppo-gamma"} and versus["bandit-gamma"]["ppo-gamma"]["mean_diff"] == (
        pytest.approx(report["hypervolume_per_seed"]["ppo-gamma"]["mean"]
                      - report["hypervolume_per_seed"]["bandit-gamma"]["mean"]))
    baselines = report["baselines"]
    assert baselines["run"] == ["supervised", "bandit"] and "no 'confidence' column" in baselines["skipped"]["cascade"]
    policy = json.loads((sweep_out / "policies" / "alpha-w0-seed0" / "policy.json").read_text())
    assert baselines["train_rows"] == policy["train_rows"] == 33  # the rows PPO trained on (55 % of 60)
    assert baselines["supervised"]["seconds"] < 5 and baselines["bandit"]["seconds"] < 5
    assert report["train_seconds"]["policies"] == 6 and report["train_seconds"]["median"] > 0
    assert len(report["dominance"]) == 4 + 6  # 4 static policies, 6 random (component, weight) means
    png = sweep_out / "pareto.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and imread(png).ndim == 3


def test_resume_reuses_finished_policies(sweep_out: Path, table_path: Path, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "resumed"
    shutil.copytree(sweep_out, out)
    reused = out / "policies" / "alpha-w0.5-seed0" / "policy.zip"
    before = reused.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="stage_b.pareto"):
        report = run_sweep(ParetoConfig(table_path, out, weights=(0.0, 0.5), seeds=(0, 1), components=("alpha",),
                                       timesteps=512, n_envs=2))
    assert reused.stat().st_mtime_ns == before and "reusing" in caplog.text
    assert report["train_seconds"]["policies"] == 4 and report["train_seconds"]["trained"] == 2
    assert (out / "policies" / "alpha-w0.5-seed1" / "policy.json").is_file()
    with pytest.raises(ValueError, match="trained with"):  # same folder, other config: refuse to mix
        run_sweep(ParetoConfig(table_path, out, weights=(0.5,), seeds=(0,), components=("alpha",), timesteps=1024))


def test_policies_of_a_replaced_table_are_retrained(table_path: Path, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The same --table path, since overwritten with other outcomes of the same shapes: reusing would mix tables."""
    table = Path(shutil.copy(table_path, tmp_path / "outcomes_toy.npz"))
    sweep = ParetoConfig(table, tmp_path / "sweep", weights=(0.5,), seeds=(0,), components=("alpha",), timesteps=512,
                         n_envs=2, workers=1)
    run_sweep(sweep)
    record_path = sweep.out / "policies" / "alpha-w0.5-seed0" / "policy.json"
    first = json.loads(record_path.read_text())["table_sha256"]
    assert first == file_sha256(table)
    replaced = OutcomeTable.load(table)
    replaced.score = 1.0 - replaced.score
    replaced.save(table)
    with caplog.at_level(logging.INFO, logger="stage_b.pareto"):
        report = run_sweep(sweep)
    assert report["train_seconds"]["trained"] == 1 and "reusing" not in caplog.text
    assert f"retraining {record_path.parent}: it was trained on a table with sha256 {first[:12]}" in caplog.text
    assert json.loads(record_path.read_text())["table_sha256"] == file_sha256(table) != first


def test_a_failing_worker_raises(sweep_out: Path, table_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "broken"
    shutil.copytree(sweep_out / "policies" / "gamma-w0.5-seed0", out / "policies" / "gamma-w0.5-seed0")
    (out / "policies" / "gamma-w0.5-seed0" / "policy.safetensors").unlink()
    with pytest.raises(RuntimeError, match="gamma-w0.5-seed0 failed"):
        run_sweep(ParetoConfig(table_path, out, weights=(0.5,), seeds=(0,), components=("gamma",), timesteps=512,
                              n_envs=2, workers=1))
    assert not (out / "pareto.csv").exists()


@pytest.mark.parametrize("flag,value,message", [("--alphas", "0,-0.1", "--alphas item is -0.1; expected a finite number >= 0"),
                                                ("--alphas", "0,x", "--alphas is '0,x': item 'x' is not a finite number"),
                                                ("--alphas", "0,inf", "--alphas is '0,inf': item 'inf' is not a finite number"),
                                                ("--components", "alpha,cost", "--components has ['cost']"),
                                                ("--seeds", "-1", "--seeds item is -1; expected an integer >= 0"),
                                                ("--seeds", "0,x", "--seeds is '0,x': item 'x' is not an integer"),
                                                ("--timesteps", "0", "--timesteps is 0; expected an integer >= 1"),
                                                ("--n-envs", "0", "--n-envs is 0; expected an integer >= 1"),
                                                ("--workers", "0", "--workers is 0; expected an integer >= 1"),
                                                ("--baselines", "supervised,ridge",
                                                 "item 'ridge' is not one of ['supervised', 'cascade', 'bandit']"),
                                                ("--baselines", ",", "--baselines is ','; expected comma-separated names"),
                                                ("--baselines", "none,bandit", "item 'none' is not one of")])
def test_bad_arguments_exit_2_before_the_table_is_read(tmp_path: Path, flag: str, value: str, message: str,
                                                       capsys: pytest.CaptureFixture) -> None:
    assert main(["--table", str(tmp_path / "none.npz"), "--out", str(tmp_path), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err  # the missing table would be named if it were read first
    assert not (tmp_path / "policies").exists()


def test_missing_table_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--table", str(tmp_path / "none.npz"), "--out", str(tmp_path)]) == 2
    assert "stage_b-outcomes" in capsys.readouterr().err


def test_cascade_requested_without_confidence_exits_2_before_training(table_path: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    assert main(["--table", str(table_path), "--out", str(tmp_path), "--baselines", "supervised,cascade"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--baselines cascade needs the no-audio 'confidence' column, which {table_path} " \
        "lacks; rebuild the table with stage_b-outcomes" in err
    assert not (tmp_path / "policies").exists()


def test_no_baselines(table_path: Path, tmp_path: Path) -> None:
    assert main(["--table", str(table_path), "--out", str(tmp_path), "--seeds", "0", "--components", "alpha",
                 "--baselines", "none", "--timesteps", "512", "--n-envs", "2", "--workers", "1", "--alphas", "0"]) == 0
    report = json.loads((tmp_path / "pareto.json").read_text())
    assert report["baselines"] == {"run": [], "skipped": {}} and report["ppo_minus_baseline_hypervolume"] == {}
    assert set(report["hypervolume_per_seed"]) == {"ppo-alpha"}


def test_confidence_sweep_charges_the_no_audio_run(table_path: Path, tmp_path: Path) -> None:
    table = OutcomeTable.load(table_path)
    table.confidence = np.linspace(0, 1, table.n_rows, dtype=np.float32)
    path = table.save(tmp_path / "outcomes_toy.npz")
    out = tmp_path / "sweep"
    assert main(["--table", str(path), "--out", str(out), "--seeds", "0", "--components", "alpha", "--confidence",
                 "--timesteps", "512", "--n-envs", "2", "--workers", "1", "--alphas", "0"]) == 0
    policy = SavedPolicy.load(out / "policies" / "alpha-w0-seed0")
    assert policy.confidence
    rows = np.asarray(policy.record["test_rows"])
    actions = policy.play(table, rows)["action"]
    charged = summarize(table, rows, actions, confidence=True)
    ppo = next(r for r in read_csv(out / "pareto.csv") if r["method"] == "ppo-alpha")
    assert ppo["gflops_per_query"] == pytest.approx(charged["gflops_per_query"])
    assert charged["gflops_per_query"] > summarize(table, rows, actions)["gflops_per_query"]
    # the default baselines run the cascade on a table with confidence: on the held-out rows, paying the base run
    csv_rows = read_csv(out / "pareto.csv")
    cascade = [r for r in csv_rows if r["method"] == "cascade"]
    report = json.loads((out / "pareto.json").read_text())
    assert report["baselines"]["run"] == ["supervised", "cascade", "bandit"] and report["baselines"]["skipped"] == {}
    assert len(cascade) == len(report["baselines"]["cascade"]["thresholds"]) == 2  # one weight: never and always
    index = table.actions.tolist().index(report["baselines"]["cascade"]["k"])
    assert cascade[0]["gflops_per_query"] == pytest.approx(table.gflops[rows, 0].mean())
    assert cascade[-1]["gflops_per_query"] == pytest.approx((table.gflops[rows, index] + table.gflops[rows, 0]).mean())
    assert report["hypervolume_per_seed"]["cascade"]["deterministic"]
    assert set(report["ppo_minus_baseline_hypervolume"]["cascade"]) == {"ppo-alpha"}
