"""`stage_b-pareto --budget`: PPO trained and played under each budget, the static policies through the same budget,
budget.csv / budget.png / pareto.json's block, and the budget a policy observes, on a toy table."""

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from stable_baselines3.common.callbacks import BaseCallback

from envs.outcome_table import OutcomeTable
from stage_b.budget import BUDGET_COLUMNS
from stage_b.evaluate import SavedPolicy
from stage_b.pareto import COLUMNS, main, read_csv
from stage_b.train import PolicyConfig, train_policy

BUDGETS = (0.3, 1.0)
SWEEP = ["--seeds", "0,1", "--components", "alpha", "--alphas", "0", "--timesteps", "512", "--n-envs", "2",
         "--workers", "2"]


@pytest.fixture(scope="module")
def table_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Visual questions need no audio, the others do (k4 fails on a fifth of them); audio costs 4-6x no audio."""
    n, rng = 60, np.random.default_rng(0)
    family = np.array(["visual", "audio", "audio_visual"])[np.arange(n) % 3]
    score = np.ones((n, 4), np.float32)
    score[family != "visual", 0] = 0.0
    score[rng.random(n) < 0.2, 1] = 0.0
    gflops = np.tile(np.array([1.0, 4.0, 5.0, 6.0], np.float32), (n, 1))
    table = OutcomeTable(ids=np.array([f"q{i}" for i in range(n)]), family=family, qtype=np.array(["kind"] * n),
                         actions=np.array([0, 4, 8, 16]), score=score, gflops=gflops, latency_ms=10 * gflops,
                         features=np.column_stack([family == "visual", rng.normal(size=n)]).astype(np.float32),
                         provenance={"split": "toy"})
    return table.save(tmp_path_factory.mktemp("table") / "outcomes_toy.npz")


@pytest.fixture(scope="module")
def sweep_out(table_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("budget_sweep")
    assert main(["--table", str(table_path), "--out", str(out), "--budget", ",".join(map(str, BUDGETS)), *SWEEP]) == 0
    return out


def test_budget_policies_train_under_their_budget(sweep_out: Path, table_path: Path) -> None:
    table = OutcomeTable.load(table_path)
    for budget in BUDGETS:
        for seed in (0, 1):
            policy = SavedPolicy.load(sweep_out / "policies" / f"budget-b{budget:g}-seed{seed}")
            config = policy.config
            assert (config.budget, config.alpha, config.gamma, config.seed) == (budget, 0.0, 0.0, seed)
            assert policy.scale == config.reward_scale(table)  # the weight sweep's rule: fitted on the training rows


def test_budget_csv_and_pareto_csv(sweep_out: Path, table_path: Path) -> None:
    assert (sweep_out / "budget.csv").read_text().splitlines()[0] == ",".join(BUDGET_COLUMNS)
    rows = read_csv(sweep_out / "budget.csv")
    assert {(r["budget"], r["seed"]) for r in rows if r["method"] == "ppo"} == {(b, s) for b in BUDGETS for s in (0, 1)}
    statics = {(r["budget"], r["method"]): r for r in rows if r["method"] != "ppo"}
    assert set(statics) == {(b, m) for b in BUDGETS for m in ("never", "always-k4", "always-k8", "always-k16")}
    assert all(r["seed"] is None for r in statics.values())
    table = OutcomeTable.load(table_path)
    for r in rows:  # audio is refused beyond the budget: what is spent above it is no-audio answers only
        assert r["gflops_per_query"] <= r["budget"] * table.gflops.max() + table.gflops[:, 0].max() + 1e-9, r
    # pareto.csv is untouched by budgets: its columns, and no budgeted policy among its rows
    assert (sweep_out / "pareto.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    assert {r["method"] for r in read_csv(sweep_out / "pareto.csv")} == {
        "never", "always-k4", "always-k8", "always-k16", "oracle", "oracle-frontier", "ppo-alpha", "random-alpha",
        "supervised-alpha", "bandit-alpha"}  # the baselines of the weight sweep; budgets add no pareto.csv rows
    assert len([r for r in read_csv(sweep_out / "pareto.csv") if r["method"] == "ppo-alpha"]) == 2


def test_static_policies_play_through_the_same_budget(sweep_out: Path, table_path: Path) -> None:
    """always-k16 at 0.3 on the 18 held-out questions (one episode): 0.3 * 18 * 6 = 32.4 GFLOPs buy audio for the
    first 5 questions of the episode (30), the other 13 are forced to no audio; at budget 1 nothing is forced."""
    table = OutcomeTable.load(table_path)
    held_out = json.loads((sweep_out / "policies" / "budget-b0.3-seed0" / "policy.json").read_text())["test_rows"]
    order = np.random.default_rng(0).permutation(held_out)  # stage_b.evaluate.play's episode order
    rows = {(r["budget"], r["method"]): r for r in read_csv(sweep_out / "budget.csv") if r["method"] != "ppo"}
    k16 = rows[(0.3, "always-k16")]
    assert k16["audio_rate"] == pytest.approx(5 / 18) and k16["forced_rate"] == pytest.approx(13 / 18)
    assert k16["gflops_per_query"] == pytest.approx((5 * 6 + 13 * 1) / 18)
    # latency as taken: 13 forced answers at 10 ms, 5 audio answers at 60 ms; unforced at budget 1, all at 60 ms
    assert k16["latency_p50_ms"] == pytest.approx(10.0) and k16["latency_p95_ms"] == pytest.approx(60.0)
    assert rows[(1.0, "always-k16")]["latency_p50_ms"] == pytest.approx(60.0)
    assert k16["accuracy"] == pytest.approx((5 + (table.family[order[5:]] == "visual").sum()) / 18)
    assert rows[(1.0, "always-k16")]["forced_rate"] == 0 and rows[(1.0, "always-k16")]["accuracy"] == 1.0
    assert rows[(0.3, "never")]["forced_rate"] == 0 and rows[(0.3, "never")]["gflops_per_query"] == 1.0


def test_pareto_json_names_the_best_static_policy_and_the_figure_exists(sweep_out: Path) -> None:
    report = json.loads((sweep_out / "pareto.json").read_text())
    assert report["sweep"]["budgets"] == list(BUDGETS) and report["budget"]["reward"] == {"alpha": 0.0, "gamma": 0.0}
    rows = read_csv(sweep_out / "budget.csv")
    for point in report["budget"]["points"]:
        at = [r for r in rows if r["budget"] == point["budget"]]
        ppo = [r["accuracy"] for r in at if r["method"] == "ppo"]
        assert point["n_seeds"] == 2 and point["ppo_accuracy"] == pytest.approx(np.mean(ppo))
        assert point["ppo_accuracy_std"] == pytest.approx(np.std(ppo, ddof=1))
        assert point["best_static"]["accuracy"] == max(r["accuracy"] for r in at if r["method"] != "ppo")
        assert point["ppo_minus_best_static"] == pytest.approx(point["ppo_accuracy"] - point["best_static"]["accuracy"])
    assert report["budget"]["points"][1]["best_static"]["method"] == "always-k8"  # k8 and k16 tie; k8 is cheaper
    png = sweep_out / "budget.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and imread(png).ndim == 3


def test_a_budget_policy_observes_the_budget_left(sweep_out: Path, table_path: Path) -> None:
    """The observation's budget feature, replayed against arithmetic done here: (budget - spent) / budget, floored
    at 0, with budget = b * questions * the table's most expensive answer."""
    policy = SavedPolicy.load(sweep_out / "policies" / "budget-b0.3-seed0")
    table = OutcomeTable.load(table_path)
    order = np.asarray(policy.record["test_rows"])[:12]
    env = policy.env(table, order)
    obs, _ = env.reset(options={"order": order})
    total, spent, seen = 0.3 * len(order) * float(table.gflops.max()), 0.0, []
    for _ in order:
        seen.append(obs[-2])
        assert obs[-2] == pytest.approx(max(0.0, total - spent) / total, abs=1e-6)
        obs, _, _, _, info = env.step(int(policy.model.predict(obs, deterministic=True)[0]))
        spent += info["gflops"]
    assert seen[0] == 1.0 and min(seen) < 1.0


class BudgetSeen(BaseCallback):
    """Records each training env's budget and the budget feature of every observation PPO collects."""

    def __init__(self) -> None:
        super().__init__()
        self.budgets: list = []
        self.fractions: list[float] = []

    def _on_training_start(self) -> None:
        self.budgets = self.training_env.get_attr("budget")

    def _on_step(self) -> bool:
        self.fractions.extend(self.locals["new_obs"][:, -2].tolist())
        return True


def test_training_sees_the_budget(table_path: Path, tmp_path: Path) -> None:
    seen = BudgetSeen()
    train_policy(PolicyConfig(str(table_path), alpha=0.0, budget=0.3, timesteps=512, n_envs=2, eval_every=512),
                 tmp_path / "policy", tensorboard=False, extra_callbacks=[seen])
    fractions = np.asarray(seen.fractions)
    assert seen.budgets == [0.3, 0.3] and len(fractions) == 512
    assert fractions.min() == 0.0 and fractions.max() == 1.0 and len(np.unique(fractions)) > 5


@pytest.mark.parametrize("flags, message", [
    (["--budget", "0"], "--budget is '0': item '0' is not a finite number > 0 and <= 1"),
    (["--budget", "0.3,1.5"], "--budget is '0.3,1.5': item '1.5' is not a finite number > 0 and <= 1"),
    (["--budget", "0.3,x"], "--budget is '0.3,x': item 'x' is not a finite number > 0 and <= 1"),
    (["--budget", "nan"], "--budget is 'nan': item 'nan' is not a finite number > 0 and <= 1"),
    (["--budget", ","], "--budget is ','; expected comma-separated values, each a finite number > 0 and <= 1"),
    (["--budget", "0.5", "--confidence"], "--budget with --confidence is not supported"),
])
def test_bad_budgets_exit_2_before_the_table_is_read(tmp_path: Path, flags: list[str], message: str,
                                                     capsys: pytest.CaptureFixture) -> None:
    assert main(["--table", str(tmp_path / "none.npz"), "--out", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"stage_b-pareto: {message}")  # the missing table is not named
    assert not (tmp_path / "policies").exists()
