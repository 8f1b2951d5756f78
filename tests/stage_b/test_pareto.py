"""`stage_b-pareto` on a toy table: a real process pool, the csv, resume, failures, the plot, bad arguments."""

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from envs.audio_budget import AudioBudgetEnv
from envs.outcome_table import OutcomeTable
from envs.reward_scale import RewardScale
from shared.loading import file_sha256
from stage_b.evaluate import SavedPolicy, summarize
from stage_b.pareto import COLUMNS, main, oracle_at_grid, read_csv, run_sweep
from stage_b.sweep_config import ParetoConfig
from stage_b.train import PolicyConfig
from stage_b.weight_grid import BEYOND

TINY = ["--timesteps", "512", "--n-envs", "2", "--workers", "2", "--alphas", "0,0.5"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def toy_table(latency: tuple[float, ...] = (10.0, 40.0, 50.0, 60.0), n: int = 60, seed: int = 0) -> OutcomeTable:
    """Visual questions need no audio, audio questions need it; audio costs 4-6x the no-audio answer in compute, and
    `latency` per action (ms) in 3 timed repeats scattered +-10 % around it."""
    rng = np.random.default_rng(seed)
    family = np.array(["visual", "audio", "audio_visual"])[np.arange(n) % 3]
    score = np.ones((n, 4), np.float32)
    score[family != "visual", 0] = 0.0
    score[rng.random(n) < 0.2, 1] = 0.0
    features = np.column_stack([family == "visual", rng.normal(size=n)]).astype(np.float32)
    gflops = np.tile(np.array([1.0, 4.0, 5.0, 6.0], np.float32), (n, 1))
    repeats = (np.asarray(latency)[:, None] * (0.9 + 0.2 * rng.random((n, 4, 3)))).astype(np.float32)
    return OutcomeTable(ids=np.array([f"q{i}" for i in range(n)]), family=family, qtype=np.array(["kind"] * n),
                        actions=np.array([0, 4, 8, 16]), score=score, gflops=gflops,
                        latency_ms=np.median(repeats, axis=2), latency_repeats_ms=repeats, features=features,
                        provenance={"split": "toy"})


@pytest.fixture(scope="module")
def table_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return toy_table().save(tmp_path_factory.mktemp("table") / "outcomes_toy.npz")


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


def test_csv_appends_latency_percentiles_over_the_repeats(sweep_out: Path, table_path: Path) -> None:
    assert COLUMNS[:8] == ("method", "alpha", "gamma", "seed", "accuracy", "gflops_per_query", "latency_ms",
                           "audio_rate") and COLUMNS[8:] == ("latency_p50_ms", "latency_p95_ms")
    rows = read_csv(sweep_out / "pareto.csv")
    table = OutcomeTable.load(table_path)
    held_out = json.loads((sweep_out / "policies" / "alpha-w0-seed0" / "policy.json").read_text())["test_rows"]
    by_method = {r["method"]: r for r in rows if r["alpha"] is None}
    for index, method in enumerate(("never", "always-k4", "always-k8", "always-k16")):
        samples = table.latency_repeats_ms[held_out, index]  # every repeat of every held-out question
        assert by_method[method]["latency_p50_ms"] == pytest.approx(np.percentile(samples, 50), rel=1e-6)
        assert by_method[method]["latency_p95_ms"] == pytest.approx(np.percentile(samples, 95), rel=1e-6)
    frontier = [r for r in rows if r["method"] == "oracle-frontier"]
    best = table.score[held_out].argmax(axis=1)  # weight 0: the best score, ties to the cheapest (lowest) action
    assert frontier[0]["latency_p95_ms"] == pytest.approx(np.percentile(table.latency_repeats_ms[held_out, best], 95))
    assert frontier[-1]["latency_p95_ms"] == pytest.approx(by_method["never"]["latency_p95_ms"])
    policy = SavedPolicy.load(sweep_out / "policies" / "gamma-w0.5-seed0")
    steps = policy.play(table, np.asarray(held_out))
    ppo = next(r for r in rows if r["method"] == "ppo-gamma" and r["gamma"] == 0.5)
    assert ppo["latency_p95_ms"] == pytest.approx(summarize(table, steps["row"], steps["action"])["latency_p95_ms"])
    assert all(r["latency_p50_ms"] <= r["latency_p95_ms"] for r in rows)
    for row in (r for r in rows if r["method"].startswith(("supervised-", "bandit-"))):  # every method has them
        assert 10 * 0.9 <= row["latency_p50_ms"] <= row["latency_p95_ms"] <= 60 * 1.1, row


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
    assert report["latency"] == {"source": "repeats", "percentiles": {"latency_p50_ms": 50, "latency_p95_ms": 95},
                                 "repeats": 3}
    assert all(c["latency_p95_ms"] > 0 for c in report["dominance"])
    assert all(p["latency_p95_ms"] > 0 for points in report["learned_points"].values() for p in points)
    components = ("alpha", "gamma", "both")
    assert report["weight_grid"] == {c: {"source": "--alphas", "weights": [0.0, 0.5]} for c in components}
    assert report["policy"] == "per-weight" and report["evaluation_grid"] == {c: [0.0, 0.5] for c in components}
    assert set(report["train_seconds"]["per_policy"]) == {f"{c}-w{w}-seed0" for c in components for w in ("0", "0.5")}
    assert set(report["oracle_at_grid"]) == set(components)
    assert all(grid["weights"] == 2 and 0 < grid["ratio_to_oracle"] <= 1 + 1e-9
               for grid in report["oracle_at_grid"].values())
    assert report["sweep"]["weights"] == {c: [0.0, 0.5] for c in components}
    assert not (sweep_out / "pareto_latency_p95.png").exists()  # only with --axis latency_p95
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


def test_a_per_weight_policy_recorded_before_weight_draws_is_reused(sweep_out: Path, table_path: Path,
                                                                     tmp_path: Path) -> None:
    """policy.json written before `weight_max` and `weight_draw` existed: a per-weight policy draws no weight."""
    out = tmp_path / "old"
    shutil.copytree(sweep_out, out)
    for record_path in (out / "policies").glob("alpha-*/policy.json"):
        record = json.loads(record_path.read_text())
        del record["config"]["weight_max"], record["config"]["weight_draw"]
        record_path.write_text(json.dumps(record))
    report = run_sweep(ParetoConfig(table_path, out, weights=(0.0, 0.5), seeds=(0,), components=("alpha",),
                                    timesteps=512, n_envs=2, baselines=()))
    assert report["train_seconds"]["trained"] == 0


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
                                                ("--baselines", "none,bandit", "item 'none' is not one of"),
                                                ("--axis", "p99",
                                                 "--axis is 'p99'; expected one of ['gflops', 'latency_p95']"),
                                                ("--eval-weights", "5",
                                                 "--eval-weights 5 without --conditioned: a per-weight sweep")])
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


def _oracle_audio_rate(sweep: ParetoConfig, table: OutcomeTable, gamma: float) -> float:
    """Share of training questions on which the reward-maximising action (ties to no audio) uses audio, in the env a
    gamma policy of the sweep trains in."""
    config = sweep.policy("gamma", gamma, 0)
    train = config.rows(table).train
    env = AudioBudgetEnv(table, rows=train, scale=config.reward_scale(table), **config.env_kwargs())
    reward = env.reward(table.score[train].astype(np.float64), table.gflops[train], table.latency_ms[train])
    return float((reward.argmax(axis=1) > 0).mean())


def test_derived_gamma_grid_reaches_no_audio_on_machines_100x_apart(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A laptop-like table (no audio 0.35 ms, audio ~8.7 ms: the encoder dominates) and a server 100x slower whose
    audio adds little (30 ms against 40 ms): the fixed grid's 1.2 never skips audio on the second, each derived
    grid's top skips it on every training question of its own table, and the weight below it does not."""
    machines = {"laptop": (0.35, 8.6, 8.65, 8.7), "server": (30.0, 40.0, 41.0, 42.0)}
    tops = {}
    for name, latency in machines.items():
        path = toy_table(latency).save(tmp_path / name / "outcomes_toy.npz")
        sweep = ParetoConfig(path, tmp_path / name / "sweep", components=("gamma",))
        grid = sweep.weight_grids["gamma"]
        table = OutcomeTable.load(path)
        assert grid["source"] == "derived" and grid["unreachable_rows"] == 0 and len(grid["weights"]) == 10
        assert grid["weights"][0] == 0.0 and grid["weights"][-2] == grid["top"] > grid["largest_no_audio_weight"]
        assert grid["weights"][-1] == pytest.approx(BEYOND * grid["top"], rel=1e-3)  # one weight past the top
        assert _oracle_audio_rate(sweep, table, grid["top"]) == 0.0
        assert _oracle_audio_rate(sweep, table, grid["weights"][-3]) > 0.0
        assert [k for k in sweep.policies()] == [f"gamma-w{w:g}-seed{s}" for w in grid["weights"] for s in (0, 1, 2)]
        tops[name] = grid["top"], _oracle_audio_rate(sweep, table, 1.2)
    assert tops["server"][0] > 1.2 and tops["server"][1] > 0.0  # the old fixed grid stops short of no audio there
    assert tops["laptop"][1] == 0.0
    explicit = ParetoConfig(tmp_path / "server" / "outcomes_toy.npz", tmp_path / "x", weights=(0.0, 2.0, 2.0),
                            components=("gamma", "alpha"))
    assert explicit.weight_grids == {c: {"source": "--alphas", "weights": [0.0, 2.0]} for c in ("gamma", "alpha")}
    faster = toy_table(machines["server"])
    train = PolicyConfig("unused").rows(faster).train
    row = int(np.flatnonzero(faster.family[train] == "audio")[0])
    faster.latency_repeats_ms[train[row], 0] *= 1.5  # a question whose no-audio answer was timed slower than audio
    faster.latency_ms = np.median(faster.latency_repeats_ms, axis=2)
    path = faster.save(tmp_path / "faster" / "outcomes_toy.npz")
    with caplog.at_level(logging.WARNING, logger="stage_b.weight_grid"):
        grid = ParetoConfig(path, tmp_path / "faster" / "sweep", components=("gamma",)).weight_grids["gamma"]
    assert grid["unreachable_rows"] == 1 and grid["rows"] == len(train) and grid["top"] == tops["server"][0]
    assert "on 1 of 33 training questions an audio action costs no more than no audio" in caplog.text


def test_sweep_without_alphas_trains_the_derived_grid_and_plots_latency(table_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "derived"
    assert main(["--table", str(table_path), "--out", str(out), "--seeds", "0", "--components", "gamma",
                 "--timesteps", "256", "--n-envs", "1", "--workers", "2", "--axis", "latency_p95"]) == 0
    report = json.loads((out / "pareto.json").read_text())
    grid = report["weight_grid"]["gamma"]
    assert grid["source"] == "derived" and len(grid["weights"]) == 10 and grid["weights"][-2] == grid["top"]
    assert grid["scale"] == PolicyConfig(str(table_path)).reward_scale(OutcomeTable.load(table_path)).to_json()
    assert report["sweep"]["weights"] == {"gamma": grid["weights"]}
    rows = read_csv(out / "pareto.csv")
    for kind in ("ppo", "supervised", "bandit"):  # the baselines sweep the component's own derived grid
        learned = [r for r in rows if r["method"] == f"{kind}-gamma"]
        assert sorted(r["gamma"] for r in learned) == grid["weights"] and {r["alpha"] for r in learned} == {0.0}
    assert all(r[column] is not None for r in rows for column in COLUMNS[8:])
    for name in ("pareto.png", "pareto_latency_p95.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC and imread(out / name).ndim == 3


def test_a_policy_of_another_reward_scale_is_retrained(sweep_out: Path, table_path: Path, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Same config and table, but trained with another scale (or before scales were recorded): reusing would mix
    reward definitions."""
    for tamper in ("other", "missing"):
        out = tmp_path / tamper
        shutil.copytree(sweep_out / "policies" / "gamma-w0.5-seed0", out / "policies" / "gamma-w0.5-seed0")
        record_path = out / "policies" / "gamma-w0.5-seed0" / "policy.json"
        record = json.loads(record_path.read_text())
        expected = record["reward_scale"]
        if tamper == "other":
            record["reward_scale"] = {"gflops": 6.0, "latency_ms": 66.0}
        else:
            del record["reward_scale"]
        record_path.write_text(json.dumps(record))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="stage_b.pareto"):
            report = run_sweep(ParetoConfig(table_path, out, weights=(0.5,), seeds=(0,), components=("gamma",),
                                            timesteps=512, n_envs=2, workers=1))
        assert report["train_seconds"]["trained"] == 1 and "reusing" not in caplog.text
        assert f"retraining {record_path.parent}: it was trained with reward scale" in caplog.text
        assert json.loads(record_path.read_text())["reward_scale"] == expected


@pytest.mark.parametrize("flags, message", [
    (["--conditioned", "--eval-weights", "1"], "--eval-weights is 1; expected an integer >= 2"),
    (["--conditioned", "--alphas", "0"], "--alphas is [0.0] with --conditioned: the largest weight is the policies' "
                                         "weight_max; expected a weight > 0"),
])
def test_bad_conditioned_arguments_exit_2_before_the_table_is_read(tmp_path: Path, flags: list[str], message: str,
                                                                   capsys: pytest.CaptureFixture) -> None:
    assert main(["--table", str(tmp_path / "none.npz"), "--out", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_oracle_at_grid_on_hand_made_outcomes(tmp_path: Path) -> None:
    """Question 0 needs audio (score 0 without, 1 with), question 1 does not; audio costs 3 GFLOPs against 1 and 1.5 ms
    against 1, both scales are 3. In compute units the oracle uses audio on question 0 while 1 - w > -w / 3, i.e. for
    w < 1.5: at w = 0 its point is (2 GFLOPs, accuracy 1), at w = 2 it is (1, 0.5). With the reference at 3 GFLOPs the
    whole frontier's hypervolume is 1 x 0.5 + 1 x 1 = 1.5; the grid {0, 2} reaches all of it, the grid {0} only the
    1 x 1 of its one point. In latency units audio pays while w < 6, so at {0, 2} the gamma oracle gets 1 x 1 too."""
    table = OutcomeTable(ids=np.array(["q0", "q1"]), family=np.array(["audio", "visual"]), qtype=np.array(["k", "k"]),
                         actions=np.array([0, 4]), score=np.array([[0.0, 1.0], [1.0, 1.0]], np.float32),
                         gflops=np.array([[1.0, 3.0], [1.0, 3.0]], np.float32),
                         latency_ms=np.array([[1.0, 1.5], [1.0, 1.5]], np.float32),
                         features=np.zeros((2, 1), np.float32), provenance={})
    scale, rows = RewardScale(3.0, 3.0), np.array([0, 1])
    both = oracle_at_grid(ParetoConfig(tmp_path / "t.npz", tmp_path, weights=(0.0, 2.0), components=("alpha", "gamma")),
                          table, rows, scale, 3.0, 1.5)
    assert both == {"alpha": {"weights": 2, "hypervolume": pytest.approx(1.5), "ratio_to_oracle": pytest.approx(1.0)},
                    "gamma": {"weights": 2, "hypervolume": pytest.approx(1.0), "ratio_to_oracle": pytest.approx(2 / 3)}}
    one = oracle_at_grid(ParetoConfig(tmp_path / "t.npz", tmp_path, weights=(0.0,), components=("alpha",)),
                         table, rows, scale, 3.0, 1.5)
    assert one == {"alpha": {"weights": 1, "hypervolume": pytest.approx(1.0), "ratio_to_oracle": pytest.approx(2 / 3)}}
    conditioned = ParetoConfig(tmp_path / "t.npz", tmp_path, weights=(0.0, 2.0), components=("both",),
                               conditioned=True, eval_weights=3)  # weights 0, 1, 2 of the cost 2 x gflops / 3
    assert conditioned.evaluation_weights("both") == [0.0, 1.0, 2.0]
    assert oracle_at_grid(conditioned, table, rows, scale, 3.0, 1.5)["both"] == {
        "weights": 3, "hypervolume": pytest.approx(1.5), "ratio_to_oracle": pytest.approx(1.0)}


@pytest.fixture(scope="module")
def conditioned_out(table_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alpha and gamma, seeds 0 and 1, one conditioned policy each on the derived grid's top, 5 evaluation weights,
    the default baselines, and a budget (its policies are per-budget, as in any sweep)."""
    out = tmp_path_factory.mktemp("conditioned")
    assert main(["--table", str(table_path), "--out", str(out), "--seeds", "0,1", "--components", "alpha,gamma",
                 "--conditioned", "--eval-weights", "5", "--timesteps", "512", "--n-envs", "2", "--workers", "2",
                 "--budget", "0.5"]) == 0
    return out


def test_conditioned_sweep_plays_one_policy_per_component_and_seed_on_one_grid(conditioned_out: Path,
                                                                               table_path: Path) -> None:
    report = json.loads((conditioned_out / "pareto.json").read_text())
    assert report["policy"] == "conditioned" and report["sweep"]["conditioned"] and report["sweep"]["eval_weights"] == 5
    names = [f"{c}-conditioned-seed{s}" for c in ("alpha", "gamma") for s in (0, 1)]
    assert sorted(p.name for p in (conditioned_out / "policies").iterdir()) == sorted(
        [*names, "budget-b0.5-seed0", "budget-b0.5-seed1"])
    assert set(report["train_seconds"]["per_policy"]) == {*names, "budget-b0.5-seed0", "budget-b0.5-seed1"}
    rows = read_csv(conditioned_out / "pareto.csv")
    table = OutcomeTable.load(table_path)
    for component, units in (("alpha", (1.0, 0.0)), ("gamma", (0.0, 1.0))):
        weight_max = report["weight_grid"][component]["weights"][-1]
        grid = np.linspace(0, weight_max, 5).tolist()
        assert report["evaluation_grid"][component] == grid and report["oracle_at_grid"][component]["weights"] == 5
        folder = conditioned_out / "policies" / f"{component}-conditioned-seed0"
        record = json.loads((folder / "policy.json").read_text())
        assert record["conditioned"] and record["config"]["weight_max"] == weight_max
        assert (record["config"]["alpha"], record["config"]["gamma"]) == units
        expected = sorted((w * units[0], w * units[1]) for w in grid for _ in (0, 1))
        for kind in ("ppo", "random", "supervised", "bandit"):  # every weighted method on the same weights and seeds
            found = [r for r in rows if r["method"] == f"{kind}-{component}"]
            assert sorted((r["alpha"], r["gamma"]) for r in found) == expected, kind
        policy = SavedPolicy.load(conditioned_out / "policies" / f"{component}-conditioned-seed1")
        held_out = np.asarray(policy.record["test_rows"])
        steps = policy.play(table, held_out, weight=grid[3])
        ppo = next(r for r in rows if r["method"] == f"ppo-{component}" and r["seed"] == 1
                   and (r["alpha"], r["gamma"]) == (grid[3] * units[0], grid[3] * units[1]))
        assert ppo["accuracy"] == pytest.approx(summarize(table, steps["row"], steps["action"])["accuracy"]["mean"])
        assert ppo["gflops_per_query"] == pytest.approx(table.gflops[steps["row"], steps["action"]].mean())
    assert len([r for r in rows if r["method"] == "oracle-frontier"]) > 2
    assert len(report["dominance"]) == 4 + 2 * 5  # static policies, then random means per component and weight
    assert set(report["ppo_minus_baseline_hypervolume"]) == {f"{b}-{c}" for b in ("supervised", "bandit")
                                                              for c in ("alpha", "gamma")}
    assert report["ppo_minus_baseline_hypervolume"]["supervised-alpha"]["ppo-alpha"]["ci95"] is not None
    assert all(0 < grid["ratio_to_oracle"] <= 1 + 1e-9 for grid in report["oracle_at_grid"].values())
    assert [p["budget"] for p in report["budget"]["points"]] == [0.5] and (conditioned_out / "budget.csv").is_file()


def test_a_conditioned_policy_of_other_steps_or_weight_max_is_retrained(conditioned_out: Path, table_path: Path,
                                                                         tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "again"
    name = "alpha-conditioned-seed0"
    shutil.copytree(conditioned_out / "policies" / name, out / "policies" / name)
    weight_max = json.loads((conditioned_out / "pareto.json").read_text())["weight_grid"]["alpha"]["weights"][-1]
    sweep = ParetoConfig(table_path, out, seeds=(0,), components=("alpha",), timesteps=512, n_envs=2, workers=1,
                         conditioned=True, eval_weights=3, baselines=())
    with caplog.at_level(logging.INFO, logger="stage_b.pareto"):
        assert run_sweep(sweep)["train_seconds"]["trained"] == 0 and "reusing" in caplog.text
        caplog.clear()
        assert run_sweep(replace(sweep, timesteps=1024))["train_seconds"]["trained"] == 1
        assert "it was trained with {'timesteps': 512}, the sweep's are {'timesteps': 1024}" in caplog.text
        caplog.clear()
        report = run_sweep(replace(sweep, timesteps=1024, weights=(0.0, 1.0)))
    assert report["train_seconds"]["trained"] == 1 and report["evaluation_grid"] == {"alpha": [0.0, 0.5, 1.0]}
    assert f"it was trained with {{'weight_max': {weight_max}}}, the sweep's are {{'weight_max': 1.0}}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="stage_b.pareto"):
        assert run_sweep(replace(sweep, timesteps=1024, weights=(0.0, 1.0), weight_draw="uniform")
                         )["train_seconds"]["trained"] == 1
    assert "it was trained with {'weight_draw': 'squared'}, the sweep's are {'weight_draw': 'uniform'}" in caplog.text
    with pytest.raises(ValueError, match="holds a policy trained with"):  # any other difference is refused
        run_sweep(replace(sweep, timesteps=1024, weights=(0.0, 1.0), n_envs=1))
