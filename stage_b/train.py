"""`stage_b-train --alpha A`: a PPO policy that chooses, per question, no audio or audio with k tokens.

The policy trains on the table-mode `SAFE/AudioBudget-v0` env. The outcome table's rows are cut three
ways, the same for every policy seed (`PolicyConfig.rows`): `test_fraction` of them (30 %, a split seeded
by `split_seed`, exactly the held-out rows of earlier versions) are held out for the reported numbers
(`stage_b-eval`, `stage_b-pareto`, `stage_b-live`) and never seen in training; `val_fraction` of all rows
(15 %), drawn from the rest with the same seed, are the validation rows, on which an evaluation callback
selects the best model (`best/`); PPO, the feature scaler and the reward's cost scale
(`PolicyConfig.reward_scale`, envs.reward_scale) see only the remaining training rows (55 %); the
validation rows are rewarded with that same scale. Training uses SB3's vectorised envs and TensorBoard
logging (wandb with --wandb through SB3's integration).

The folder holds, without pickle, the final policy's actor as `policy.safetensors` (stage_b.actor) and
`policy.json`: the config, the number of training rows (every table row not listed as validation or
test row), the validation and test rows, each validation evaluation and the best one (`selection`),
the feature scaler, the reward's cost scale (`reward_scale`, which evaluation passes back to the env),
the actor's architecture and hash, the table's provenance and the SHA-256 of the table file
(`table_sha256`, what `stage_b-pareto` compares before reusing a policy). `best/` is a complete policy
folder of the same form (`policy.safetensors` + `policy.json` with the same `reward_scale`, loadable by
`stage_b-eval --policy DIR/best`) holding the actor with the best mean validation reward. Reported
numbers use the final policy, so no test row is used to choose anything. SB3's own pickled `policy.zip`
is kept for resuming training in SB3 (loading it needs --trust-pickle).
A policy.json written before the validation split (no `val_fraction` in its config, no `val_rows`)
loads as `val_fraction` 0: it trained on every non-test row, and its `best/` (SB3's pickled
`best_model.zip`, which nothing loads) was selected on the test rows; its final policy never was.
An --out folder that already holds files is refused (exit 2) unless --overwrite is given (stage_b-pareto
reuses its own policy folders through `train_policy` and is unaffected).

`--weight-max W` trains one *weight-conditioned* policy instead (`SAFE/AudioBudgetConditioned-v0`,
envs.weight_conditioned): --alpha and --gamma are the cost's units (default 1 and 0: compute), every
training episode draws its weight w in [0, W] (`--weight-draw`: W x u^2 with u uniform, by default, or
uniformly), rewards with w x the units and shows w / W to the policy as one more observation column. Its validation (the `best/` selection) plays every validation row
once at each of VAL_WEIGHTS fixed weights evenly spaced in [0, W] and scores the mean over those weights of
the mean reward per question (EvalCallback's random episodes would each draw another weight, so two
evaluations would not be comparable). policy.json records `conditioned` and the config's `weight_max`;
`stage_b-eval --weight w` plays it at one weight. A budget (--budget) is charged by the inner env as for
any policy, so the two combine.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback, EventCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.policies import ActorCriticPolicy

from envs.audio_budget import BUDGET, AudioBudgetEnv, FeatureScaler, observed_columns
from envs.outcome_table import DEFAULT_TABLE, OutcomeTable
from envs.reward_scale import RewardScale
from envs.weight_conditioned import DEFAULT_DRAW, WEIGHT_DRAWS, WeightConditioned
from shared.checkpoint import atomic_directory, atomic_write_text
from shared.cli import ArgumentParser, InputError, add_overwrite_flag, check_number, console, refuse_overwrite
from shared.loading import file_sha256
from shared.logs import setup_logging, wandb_mode
from stage_b.actor import save_actor
from stage_b.playback import play

VAL_STREAM = 1  # the validation draw's random stream under split_seed, apart from the test split's permutation
LEGACY_VAL_FRACTION = 0.0  # what a policy.json written before the validation split trained with
VAL_WEIGHTS = 5  # a weight-conditioned policy is validated at this many evenly spaced weights in [0, weight_max]
DEFAULT_UNITS = {"alpha": 1.0, "gamma": 0.0}  # stage_b-train --weight-max without --alpha/--gamma: the compute unit


@dataclass(frozen=True)
class PolicyRows:
    """A policy's disjoint table rows: train (PPO, scaler), val (model selection), test (reported numbers only)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass
class PolicyConfig:
    """One policy's reward weights, budget, episode length, seed, row split and PPO budget.

    With `weight_max` the policy is weight-conditioned (envs.weight_conditioned): `alpha` and `gamma` are then
    the cost's units, and each training episode draws its weight w in [0, weight_max] (reward weights
    w * alpha, w * gamma) and shows it to the policy."""

    table: str
    alpha: float = 0.1
    gamma: float = 0.0
    budget: float | None = None
    confidence: bool = False
    episode_length: int = 32
    seed: int = 0
    split_seed: int = 0
    timesteps: int = 100_000
    n_envs: int = 8
    test_fraction: float = 0.3
    eval_every: int = 10_000
    val_fraction: float = 0.15
    weight_max: float | None = None
    weight_draw: str = DEFAULT_DRAW  # a conditioned policy's training weights (envs.weight_conditioned.WEIGHT_DRAWS)

    @property
    def conditioned(self) -> bool:
        """Whether the policy is weight-conditioned (`weight_max` set)."""
        return self.weight_max is not None

    def env_kwargs(self) -> dict:
        """The AudioBudgetEnv arguments this config fixes: episode length, reward weights (0 for a conditioned
        policy, whose wrapper charges the costs), budget, confidence."""
        alpha, gamma = (0.0, 0.0) if self.conditioned else (self.alpha, self.gamma)
        return {"episode_length": self.episode_length, "alpha": alpha, "gamma": gamma,
                "budget": self.budget, "confidence": self.confidence}

    def make_env(self, table: OutcomeTable, **kwargs: object) -> AudioBudgetEnv | WeightConditioned:
        """The env this config trains in (`kwargs`: rows, scaler, scale, ... of AudioBudgetEnv), wrapped in
        WeightConditioned with units (alpha, gamma) when the policy is weight-conditioned."""
        env = AudioBudgetEnv(table, **kwargs, **self.env_kwargs())
        if not self.conditioned:
            return env
        return WeightConditioned(env, (self.alpha, self.gamma), self.weight_max, self.weight_draw)

    def validation_weights(self) -> list[float] | None:
        """The fixed weights a conditioned policy is validated at (VAL_WEIGHTS evenly spaced in [0, weight_max])."""
        return np.linspace(0.0, self.weight_max, VAL_WEIGHTS).tolist() if self.conditioned else None

    def __post_init__(self) -> None:
        """Every number checked before a table is read; fields with a flag are named by it."""
        check_number("--alpha", self.alpha, ge=0)
        check_number("--gamma", self.gamma, ge=0)
        check_number("--budget", self.budget, optional=True, **BUDGET)
        for name, value in (("--episode-length", self.episode_length), ("--timesteps", self.timesteps),
                            ("--n-envs", self.n_envs), ("eval_every", self.eval_every)):
            check_number(name, value, ge=1, integer=True)
        for name, value in (("--seed", self.seed), ("split_seed", self.split_seed)):
            check_number(name, value, ge=0, integer=True)
        check_number("test_fraction", self.test_fraction, gt=0, lt=1)
        check_number("val_fraction", self.val_fraction, ge=0, lt=1 - self.test_fraction)
        check_number("--weight-max", self.weight_max, optional=True, gt=0)
        if self.weight_draw not in WEIGHT_DRAWS:
            raise InputError(f"--weight-draw is {self.weight_draw!r}; expected one of {list(WEIGHT_DRAWS)}")
        if self.weight_draw != DEFAULT_DRAW and not self.conditioned:
            raise InputError(f"--weight-draw {self.weight_draw} without --weight-max: only weight-conditioned policies "
                             "draw weights; expected --weight-draw only with --weight-max")
        if self.conditioned and self.alpha == self.gamma == 0:
            raise InputError(f"--weight-max {self.weight_max} with --alpha 0 and --gamma 0: the weight would multiply "
                             "no cost; expected a nonzero --alpha or --gamma unit")

    def rows(self, table: OutcomeTable) -> PolicyRows:
        """The seeded three-way split of `table`'s rows; it depends on split_seed and the fractions, not on seed.

        The test rows are `table.split_rows(1 - test_fraction, split_seed)`'s held-out rows, exactly as
        before the validation split existed; `round(val_fraction * n_rows)` validation rows are then drawn
        from the other rows with split_seed, and the rest are the training rows."""
        rest, test = table.split_rows(1.0 - self.test_fraction, self.split_seed)
        n_val = round(self.val_fraction * table.n_rows)
        if n_val >= rest.size or (self.val_fraction > 0 and n_val == 0):
            raise ValueError(f"val_fraction {self.val_fraction} of {table.n_rows} rows is {n_val} validation rows, "
                             f"out of the {rest.size} left after test_fraction {self.test_fraction}; expected at "
                             "least one validation row (or val_fraction 0) and at least one training row")
        val = np.sort(np.random.default_rng([self.split_seed, VAL_STREAM]).choice(rest, size=n_val, replace=False))
        return PolicyRows(np.setdiff1d(rest, val), val, test)

    def reward_scale(self, table: OutcomeTable) -> RewardScale:
        """The reward's cost scale this config trains with: fitted on `table`'s training rows (`rows(table).train`)."""
        return RewardScale.fit(table, self.rows(table).train, self.confidence)


class Selection(BaseCallback):
    """Run by EvalCallback (or FixedWeightEval) after each evaluation on the validation rows: logs it and keeps the
    best actor's weights. `weights`: those a conditioned policy is validated at (recorded)."""

    def __init__(self, weights: list[float] | None = None) -> None:
        super().__init__()
        self.weights = weights
        self.evaluations: list[dict] = []
        self.best: dict | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def _on_step(self) -> bool:
        point = {"timesteps": int(self.num_timesteps), "val_mean_reward": float(self.parent.last_mean_reward)}
        self.evaluations.append(point)
        if self.best is None or point["val_mean_reward"] > self.best["val_mean_reward"]:
            self.best = point
            self.best_state = {name: t.detach().clone() for name, t in self.model.policy.state_dict().items()}
        return True

    def record(self) -> dict:
        """What policy.json keeps of the selection: the rows it used, every evaluation and the best one (and, for a
        conditioned policy, the weights and what val_mean_reward means there)."""
        fixed = {} if self.weights is None else {
            "weights": self.weights, "val_mean_reward": "the mean over the weights of the mean reward per validation "
                                                        "question, every validation row played once at each weight"}
        return {"rows": "val", **fixed, "evaluations": self.evaluations, "best": self.best}

    def best_policy(self, final: ActorCriticPolicy) -> ActorCriticPolicy | None:
        """A copy of `final` holding the best weights, or None if no evaluation ran."""
        if self.best_state is None:
            return None
        policy = type(final)(**final._get_constructor_parameters())  # as SB3 rebuilds a saved policy
        policy.load_state_dict(self.best_state)
        return policy.eval()


class FixedWeightEval(EventCallback):
    """EvalCallback's role for a weight-conditioned policy: every `eval_freq` calls, the deterministic policy plays
    every validation row once at each fixed weight (`play`), and the mean over weights of its mean reward per
    question is `last_mean_reward` for the Selection callback. Fixed weights and rows make evaluations comparable;
    EvalCallback's random episodes would draw a new weight each."""

    def __init__(self, env: WeightConditioned, rows: np.ndarray, weights: list[float], eval_freq: int,
                 selection: Selection) -> None:
        super().__init__(selection)
        self.env, self.rows, self.weights, self.eval_freq = env, rows, weights, eval_freq
        self.last_mean_reward = -np.inf

    def _on_step(self) -> bool:
        if self.n_calls % self.eval_freq:
            return True
        self.last_mean_reward = float(np.mean([play(self.model, self.env, self.rows, weight=w)["reward"].mean()
                                               for w in self.weights]))
        return self._on_event()


def _write_record(folder: Path, record: dict) -> None:
    """policy.json as strict JSON (no NaN or Infinity), atomically."""
    atomic_write_text(folder / "policy.json", json.dumps(record, indent=1, allow_nan=False))


def train_policy(config: PolicyConfig, out_dir: Path, tensorboard: bool = True, wandb: bool = False,
                 extra_callbacks: list[BaseCallback] | None = None, table: OutcomeTable | None = None) -> dict:
    """Train PPO on the train rows, keep the best model on the validation rows, save policy + JSON; returns the JSON.

    `extra_callbacks` (SB3 callbacks, e.g. a benchmark's learning curve) run after the evaluation callback;
    `table` is `config.table` already loaded (read from the file otherwise). A previous run's best/ is removed."""
    table = table or OutcomeTable.load(config.table)
    rows = config.rows(table)
    scaler = FeatureScaler.fit(observed_columns(table, config.confidence)[rows.train])
    scale = config.reward_scale(table)
    env_kwargs = {"table": table, "scaler": scaler, "scale": scale}
    envs = make_vec_env(config.make_env, n_envs=config.n_envs, seed=config.seed,
                        env_kwargs={**env_kwargs, "rows": rows.train})
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out_dir / "best", ignore_errors=True)
    selection = Selection(config.validation_weights()) if rows.val.size else None
    callbacks = [*(extra_callbacks or [])]
    eval_freq = max(1, config.eval_every // config.n_envs)
    if selection is not None and config.conditioned:
        callbacks.insert(0, FixedWeightEval(config.make_env(**env_kwargs, rows=rows.val), rows.val,
                                            selection.weights, eval_freq, selection))
    elif selection is not None:
        eval_env = make_vec_env(config.make_env, n_envs=1, seed=config.seed + 10_000,
                                env_kwargs={**env_kwargs, "rows": rows.val})
        callbacks.insert(0, EvalCallback(eval_env, callback_after_eval=selection, n_eval_episodes=20,
                                         eval_freq=eval_freq, deterministic=True, verbose=0))
    run = None
    if wandb:
        import wandb as wandb_lib
        from wandb.integration.sb3 import WandbCallback

        run = wandb_lib.init(project="safe-stage-b", config=asdict(config), dir=str(out_dir), mode=wandb_mode(),
                             sync_tensorboard=tensorboard)
        callbacks.append(WandbCallback())
    model = PPO("MlpPolicy", envs, seed=config.seed, device="cpu", n_steps=256, batch_size=256, verbose=0,
                tensorboard_log=str(out_dir / "tb") if tensorboard else None)
    start = time.perf_counter()
    model.learn(total_timesteps=config.timesteps, callback=callbacks, progress_bar=False)
    seconds = time.perf_counter() - start
    model.save(out_dir / "policy.zip")
    record = {"config": asdict(config), "conditioned": config.conditioned, "train_seconds": round(seconds, 2),
              "timesteps": config.timesteps,
              "train_rows": len(rows.train), "val_rows": rows.val.tolist(), "test_rows": rows.test.tolist(),
              "selection": selection and selection.record(), "scaler": scaler.to_json(),
              "reward_scale": scale.to_json(),
              "actor": save_actor(model.policy, out_dir), "table_provenance": table.provenance,
              "table_sha256": file_sha256(config.table) if Path(config.table).is_file() else None}
    best = selection and selection.best_policy(model.policy)
    if best is not None:
        with atomic_directory(out_dir / "best") as tmp:
            _write_record(tmp, record | {"actor": save_actor(best, tmp), "selected": selection.best})
    _write_record(out_dir, record)
    if run is not None:
        run.finish()
    return record


@console("stage_b-train")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="stage_b-train", description=__doc__.splitlines()[0])
    parser.add_argument("--table", default=DEFAULT_TABLE, help=f"outcome table (.npz) from stage_b-outcomes "
                                                              f"(default: {DEFAULT_TABLE})")
    parser.add_argument("--alpha", type=float, default=None,
                        help="weight of normalised compute in the reward (default 0.1); with --weight-max its unit "
                             "(default 1)")
    parser.add_argument("--gamma", type=float, default=None,
                        help="weight of normalised latency in the reward (default 0); with --weight-max its unit "
                             "(default 0)")
    parser.add_argument("--weight-max", type=float, default=None,
                        help="train one weight-conditioned policy: each episode draws w in [0, W] (reward weights "
                             "w x --alpha, w x --gamma) and the policy observes it; stage_b-eval then needs --weight")
    parser.add_argument("--weight-draw", default=DEFAULT_DRAW,
                        help=f"with --weight-max: how training episodes draw w, one of {list(WEIGHT_DRAWS)} (default "
                             f"{DEFAULT_DRAW}: W x u^2, denser at small weights)")
    parser.add_argument("--budget", type=float, default=None,
                        help="episode compute budget, a fraction of the maximum in (0, 1] (default: none)")
    parser.add_argument("--confidence", action="store_true",
                        help="observe the base model's no-audio confidence; audio actions then also pay that run")
    parser.add_argument("--episode-length", type=int, default=32, help="questions per episode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None,
                        help="policy folder (default: runs/stage_b/alpha<A>-gamma<G>-seed<S>, with --weight-max "
                             "runs/stage_b/conditioned-wmax<W>-alpha<A>-gamma<G>-seed<S>)")
    add_overwrite_flag(parser, "its policy files")
    parser.add_argument("--no-tensorboard", action="store_true")
    parser.add_argument("--wandb", action="store_true", help="log through SB3's wandb integration (offline without a key)")
    args = parser.parse_args(argv)
    setup_logging()
    defaults = DEFAULT_UNITS if args.weight_max is not None else {"alpha": 0.1, "gamma": 0.0}
    alpha, gamma = (defaults[name] if value is None else value for name, value in (("alpha", args.alpha),
                                                                                  ("gamma", args.gamma)))
    config = PolicyConfig(str(Path(args.table).resolve()), alpha, gamma, args.budget, args.confidence,
                          args.episode_length, seed=args.seed, timesteps=args.timesteps, n_envs=args.n_envs,
                          weight_max=args.weight_max, weight_draw=args.weight_draw)
    conditioned = "" if args.weight_max is None else f"conditioned-wmax{args.weight_max:g}-"
    out = args.out or Path("runs") / "stage_b" / f"{conditioned}alpha{alpha:g}-gamma{gamma:g}-seed{args.seed}"
    refuse_overwrite(out, args.overwrite)
    table = OutcomeTable.load(config.table)  # a missing or malformed table is named before anything starts
    record = train_policy(config, out, tensorboard=not args.no_tensorboard, wandb=args.wandb, table=table)
    provenance = record["table_provenance"]
    print(json.dumps({"policy": str(out), "train_seconds": record["train_seconds"], "timesteps": record["timesteps"],
                      "train_rows": record["train_rows"], "val_rows": len(record["val_rows"]),
                      "held_out_rows": len(record["test_rows"]), "selected": record["selection"] and
                      record["selection"]["best"],
                      "config": record["config"], "table_checkpoint_hash": provenance.get("checkpoint_hash"),
                      "table_split": provenance.get("split"), "conditioned": record["conditioned"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
