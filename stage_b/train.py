"""`stage_b-train --alpha A`: a PPO policy that chooses, per question, no audio or audio with k tokens.

The policy trains on the table-mode `SAFE/AudioBudget-v0` env over the outcome table's train rows
(a split seeded by `split_seed`, the same for every policy seed; the rest is held out for
`stage_b-eval`), with SB3's vectorised envs, an
evaluation callback on held-out rows that keeps the best model, and TensorBoard logging (wandb
with --wandb through SB3's integration). It saves the final policy's actor without pickle as
`policy.safetensors` (stage_b.actor), `policy.json`: the config, the held-out rows, the feature scaler,
the reward's cost scale fitted on the train rows (`reward_scale`, envs.reward_scale), the actor's
architecture and hash, the table's provenance and the SHA-256 of the table file (`table_sha256`,
what `stage_b-pareto` compares before reusing a policy), and SB3's own pickled `policy.zip` and
`best/best_model.zip` (for resuming training in SB3; loading them needs --trust-pickle).
An --out folder that already holds files is refused (exit 2) unless --overwrite is given (stage_b-pareto
reuses its own policy folders through `train_policy` and is unaffected).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env

from envs.audio_budget import BUDGET, AudioBudgetEnv, FeatureScaler, observed_columns
from envs.outcome_table import DEFAULT_TABLE, OutcomeTable
from envs.reward_scale import RewardScale
from shared.checkpoint import atomic_write_text
from shared.cli import ArgumentParser, add_overwrite_flag, check_number, console, refuse_overwrite
from shared.loading import file_sha256
from shared.logs import setup_logging, wandb_mode
from stage_b.actor import save_actor


@dataclass
class PolicyConfig:
    """One policy's reward weights, budget, episode length, seed and PPO budget."""

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

    def env_kwargs(self) -> dict:
        """The AudioBudgetEnv arguments this config fixes: episode length, reward weights, budget, confidence."""
        return {"episode_length": self.episode_length, "alpha": self.alpha, "gamma": self.gamma,
                "budget": self.budget, "confidence": self.confidence}

    def split(self, table: OutcomeTable) -> tuple[np.ndarray, np.ndarray]:
        """(train rows, held-out rows) of `table`: seeded by `split_seed`, the same for every policy seed."""
        return table.split_rows(1.0 - self.test_fraction, self.split_seed)

    def reward_scale(self, table: OutcomeTable) -> RewardScale:
        """The reward's cost scale this config trains with: fitted on its train rows of `table`."""
        return RewardScale.fit(table, self.split(table)[0], self.confidence)

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


def train_policy(config: PolicyConfig, out_dir: Path, tensorboard: bool = True, wandb: bool = False,
                 extra_callbacks: list[BaseCallback] | None = None, table: OutcomeTable | None = None) -> dict:
    """Train PPO on the train rows, keep the best model on held-out rows, save policy + JSON; returns the JSON.

    `extra_callbacks` (SB3 callbacks, e.g. a benchmark's learning curve) run after the evaluation callback;
    `table` is `config.table` already loaded (read from the file otherwise)."""
    table = table or OutcomeTable.load(config.table)
    train_rows, test_rows = config.split(table)
    scaler = FeatureScaler.fit(observed_columns(table, config.confidence)[train_rows])
    scale = config.reward_scale(table)
    env_kwargs = {"table": table, "scaler": scaler, "scale": scale, **config.env_kwargs()}
    envs = make_vec_env(AudioBudgetEnv, n_envs=config.n_envs, seed=config.seed,
                        env_kwargs={**env_kwargs, "rows": train_rows})
    eval_env = make_vec_env(AudioBudgetEnv, n_envs=1, seed=config.seed + 10_000,
                            env_kwargs={**env_kwargs, "rows": test_rows})
    out_dir.mkdir(parents=True, exist_ok=True)
    callbacks = [EvalCallback(eval_env, best_model_save_path=str(out_dir / "best"),
                              eval_freq=max(1, config.eval_every // config.n_envs), n_eval_episodes=20,
                              deterministic=True, verbose=0), *(extra_callbacks or [])]
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
    record = {"config": asdict(config), "train_seconds": round(seconds, 2), "timesteps": config.timesteps,
              "train_rows": len(train_rows), "test_rows": test_rows.tolist(), "scaler": scaler.to_json(),
              "reward_scale": scale.to_json(),
              "actor": save_actor(model.policy, out_dir), "table_provenance": table.provenance,
              "table_sha256": file_sha256(config.table) if Path(config.table).is_file() else None}
    atomic_write_text(out_dir / "policy.json", json.dumps(record, indent=1, allow_nan=False))  # strict JSON
    if run is not None:
        run.finish()
    return record


@console("stage_b-train")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="stage_b-train", description=__doc__.splitlines()[0])
    parser.add_argument("--table", default=DEFAULT_TABLE, help=f"outcome table (.npz) from stage_b-outcomes "
                                                              f"(default: {DEFAULT_TABLE})")
    parser.add_argument("--alpha", type=float, default=0.1, help="weight of normalised compute in the reward")
    parser.add_argument("--gamma", type=float, default=0.0, help="weight of normalised latency in the reward")
    parser.add_argument("--budget", type=float, default=None,
                        help="episode compute budget, a fraction of the maximum in (0, 1] (default: none)")
    parser.add_argument("--confidence", action="store_true",
                        help="observe the base model's no-audio confidence; audio actions then also pay that run")
    parser.add_argument("--episode-length", type=int, default=32, help="questions per episode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None, help="policy folder (default: runs/stage_b/alpha<A>-gamma<G>-seed<S>)")
    add_overwrite_flag(parser, "its policy files")
    parser.add_argument("--no-tensorboard", action="store_true")
    parser.add_argument("--wandb", action="store_true", help="log through SB3's wandb integration (offline without a key)")
    args = parser.parse_args(argv)
    setup_logging()
    config = PolicyConfig(str(Path(args.table).resolve()), args.alpha, args.gamma, args.budget, args.confidence,
                          args.episode_length, seed=args.seed, timesteps=args.timesteps, n_envs=args.n_envs)
    out = args.out or Path("runs") / "stage_b" / f"alpha{args.alpha:g}-gamma{args.gamma:g}-seed{args.seed}"
    refuse_overwrite(out, args.overwrite)
    table = OutcomeTable.load(config.table)  # a missing or malformed table is named before anything starts
    record = train_policy(config, out, tensorboard=not args.no_tensorboard, wandb=args.wandb, table=table)
    provenance = record["table_provenance"]
    print(json.dumps({"policy": str(out), "train_seconds": record["train_seconds"], "timesteps": record["timesteps"],
                      "train_rows": record["train_rows"], "held_out_rows": len(record["test_rows"]),
                      "config": record["config"], "table_checkpoint_hash": provenance.get("checkpoint_hash"),
                      "table_split": provenance.get("split")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
