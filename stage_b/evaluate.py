"""`stage_b-eval --policy DIR`: a saved policy's choices on its held-out questions, scored from the outcome table.

Reports accuracy with a 95% bootstrap CI, mean GFLOPs and latency per question, p50 and p95 latency
(stage_b.latency: over questions x timed repeats when the table keeps them), the audio usage rate,
and the action histogram per question family and type, as JSON or a table. The policy plays
each question once through the env it trained in (its budget, if any, included). The held-out
rows are those recorded in policy.json at training time, so evaluation never sees training or
validation rows; `--split S` evaluates on every question of another split's outcome table instead.
Either table must come from the Stage A checkpoint the policy's training table came from (the
`checkpoint_hash` in the table's provenance, recorded in policy.json): a table of another checkpoint,
even of the same shapes, is refused unless `--allow-other-table` (then a warning). Policies load
without pickle (policy.safetensors, stage_b.actor); an old folder with only SB3's policy.zip loads
only with `--trust-pickle`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.policies import BasePolicy

from envs.audio_budget import AudioBudgetEnv, Confidence, FeatureScaler, Outcome
from envs.outcome_table import OutcomeTable
from envs.reward_scale import RewardScale
from envs.weight_conditioned import WeightConditioned
from shared.cli import ArgumentParser, InputError, check_number, console
from shared.loading import load_json, load_sb3
from shared.logs import setup_logging
from shared.stats import mean_ci
from stage_b.actor import ACTOR_FILE, load_actor
from stage_b.latency import SOURCES, latency_percentiles, latency_source
from stage_b.playback import play
from stage_b.train import LEGACY_VAL_FRACTION, PolicyConfig

log = logging.getLogger(__name__)
POLICY_FILE = "a file of a policy folder written by stage_b-train"


class PickleRefused(ValueError):
    """A policy folder holds only SB3's pickled policy.zip and the caller did not trust pickle."""


@dataclass
class SavedPolicy:
    """A policy folder written by stage_b-train: the policy network, its training record and feature scaler."""

    folder: Path
    model: BasePolicy
    record: dict
    scaler: FeatureScaler
    config: PolicyConfig
    scale: RewardScale | None = None  # the reward's cost scale recorded at training (None: saved before scales were)

    @classmethod
    def load(cls, folder: Path, trust_pickle: bool = False) -> SavedPolicy:
        """Load the pickle-free actor (policy.safetensors + policy.json); an older folder with only policy.zip
        loads (through cloudpickle, which can run code) only with `trust_pickle`."""
        folder = Path(folder)
        record_path = folder / "policy.json"
        if not record_path.is_file():
            raise FileNotFoundError(f"{record_path} does not exist; expected a folder written by stage_b-train")
        record = load_json(record_path, POLICY_FILE, keys=("config", "scaler", "test_rows"))
        if "actor" in record:
            model = load_actor(folder, record["actor"])
        elif not (folder / "policy.zip").is_file():
            raise FileNotFoundError(f"{record_path} has no 'actor' record and {folder / 'policy.zip'} does not exist; "
                                    "expected a folder written by stage_b-train")
        elif trust_pickle:
            log.warning("loading pickled %s (--trust-pickle): it can run code; retrain to get %s",
                        folder / "policy.zip", ACTOR_FILE)
            model = load_sb3(PPO, folder / "policy.zip", POLICY_FILE, device="cpu").policy
        else:
            raise PickleRefused(f"{folder / 'policy.zip'} is a pickled SB3 policy (loading it can run code) and the "
                                f"folder has no {ACTOR_FILE}; pass --trust-pickle to load it, or retrain")
        if "val_fraction" not in record["config"]:  # written before the validation split: see stage_b.train
            record["config"] = record["config"] | {"val_fraction": LEGACY_VAL_FRACTION}
            record.setdefault("val_rows", [])
        try:
            config = PolicyConfig(**record["config"])
        except TypeError as err:
            raise InputError(f"{record_path}: 'config' does not fit ({err}); expected {POLICY_FILE}") from err
        try:
            scale = RewardScale.from_json(record["reward_scale"]) if "reward_scale" in record else None
        except ValueError as err:
            raise InputError(f"{record_path}: {err}") from err
        return cls(folder, model, record, FeatureScaler.from_json(record["scaler"]), config, scale)

    @property
    def confidence(self) -> bool:
        return self.config.confidence

    def reward_scale(self, table: OutcomeTable) -> RewardScale:
        """The reward's cost scale recorded at training; a policy saved before scales were recorded divided by the
        maxima of the table it was played on, so that is what it gets."""
        if self.scale is not None:
            return self.scale
        log.info("%s records no reward_scale (saved before scales were): its rewards divide by the table's maxima, "
                 "as stage_b-train's did then", self.folder / "policy.json")
        return RewardScale.table_max(table, self.confidence)

    def env(self, table: OutcomeTable, rows: np.ndarray, outcome: Outcome | None = None,
            live_confidence: Confidence | None = None) -> AudioBudgetEnv | WeightConditioned:
        """The env this policy trained in (reward weights and scale, budget, episode length, confidence, scaler,
        the weight wrapper of a conditioned policy) over `rows`; `outcome` and `live_confidence` switch it to live
        mode (AudioBudgetEnv)."""
        return self.config.make_env(table, rows=rows, scaler=self.scaler, outcome=outcome,
                                    live_confidence=live_confidence, scale=self.reward_scale(table))

    def play(self, table: OutcomeTable, rows: np.ndarray, seed: int = 0, outcome: Outcome | None = None,
             live_confidence: Confidence | None = None, weight: float | None = None) -> dict[str, np.ndarray]:
        """Every question of `rows` once, through this policy's env (see `play`); a weight-conditioned policy at
        `weight`, which it needs and any other policy refuses (`checked_weight`)."""
        env = self.env(table, rows, outcome, live_confidence)
        return play(self.model, env, rows, seed, self.checked_weight(weight))

    def checked_weight(self, weight: float | None, flag: str = "--weight") -> float | None:
        """`weight` if this policy takes it: a number in [0, weight_max] for a weight-conditioned policy, None for
        any other; else an InputError naming `flag`, the value and the policy."""
        config = self.config
        if config.conditioned and weight is None:
            raise InputError(f"{self.folder} is a weight-conditioned policy (weight_max {config.weight_max:g}); "
                             f"expected {flag} w in [0, {config.weight_max:g}], the cost weight to play it at")
        if not config.conditioned and weight is not None:
            raise InputError(f"{flag} {weight} for {self.folder}, a policy trained at alpha {config.alpha:g}, gamma "
                             f"{config.gamma:g}; expected no {flag} (only a weight-conditioned policy takes one)")
        return None if weight is None else check_number(flag, weight, ge=0, le=config.weight_max)

    def weights(self, weight: float | None = None) -> tuple[float, float]:
        """The (alpha, gamma) the policy plays with: its own, or for a conditioned policy `weight` x its units."""
        if self.checked_weight(weight) is None:
            return self.config.alpha, self.config.gamma
        return weight * self.config.alpha, weight * self.config.gamma

    def _check_table(self, table: OutcomeTable, path: Path, allow_other_table: bool = False) -> None:
        """Refuse a table built from another Stage A checkpoint than the policy's training table (whatever its
        shapes), or with `allow_other_table` log a warning."""
        trained_on = (self.record.get("table_provenance") or {}).get("checkpoint_hash")
        found = table.provenance.get("checkpoint_hash")
        if found == trained_on:
            return
        message = (f"{path} holds outcomes of Stage A checkpoint {found}, but policy {self.folder} was trained on "
                   f"outcomes of checkpoint {trained_on}; expected a table of that checkpoint (rebuild it with "
                   "stage_b-outcomes, or pass --allow-other-table to evaluate on it anyway)")
        if not allow_other_table:
            raise InputError(message)
        log.warning("%s", message)

    def evaluation_rows(self, split: str | None = None,
                        allow_other_table: bool = False) -> tuple[OutcomeTable, np.ndarray]:
        """The table and rows to evaluate on: the held-out rows of the training table, or all of another split's;
        either table must come from the policy's Stage A checkpoint (`_check_table`)."""
        train_path = Path(self.config.table)
        train_table = OutcomeTable.load(train_path)
        if split is None or split == train_table.provenance.get("split"):
            self._check_table(train_table, train_path, allow_other_table)
            return train_table, np.asarray(self.record["test_rows"], dtype=np.int64)
        path = train_path.parent / f"outcomes_{split}.npz"
        if not path.is_file():
            raise ValueError(f"no outcome table for split '{split}' at {path}; build it with `stage_b-outcomes "
                             f"--checkpoint {train_table.provenance.get('checkpoint', 'DIR')} --split {split}`")
        table = OutcomeTable.load(path)
        if table.action_labels != train_table.action_labels:
            raise ValueError(f"{path}: actions {table.action_labels} differ from the policy's "
                             f"{train_table.action_labels}")
        self._check_table(table, path, allow_other_table)
        return table, np.arange(table.n_rows)


def point(table: OutcomeTable, rows: np.ndarray, actions: np.ndarray, confidence: bool = False) -> dict:
    """Mean accuracy, cost per question (charged as the policy pays it) with p50 and p95 latency (stage_b.latency),
    and audio rate of one set of choices."""
    gflops, latency = table.charged_costs(confidence)
    return {"accuracy": float(table.score[rows, actions].mean(dtype=np.float64)),
            "gflops_per_query": float(gflops[rows, actions].mean(dtype=np.float64)),
            "latency_ms": float(latency[rows, actions].mean(dtype=np.float64)),
            **latency_percentiles(table, rows, actions, confidence),
            "audio_rate": float((table.actions[actions] > 0).mean())}


def summarize(table: OutcomeTable, rows: np.ndarray, actions: np.ndarray, confidence: bool = False) -> dict:
    """`point` with the accuracy's bootstrap CI, plus the latency samples' source and the action histograms per
    family and type, keyed by action label (`OutcomeTable.action_labels`: k0, k4, ..., or none, clap-k4, ...)."""
    histogram: dict[str, Counter] = defaultdict(Counter)
    labels = table.action_labels
    for row, action in zip(rows, actions):
        histogram[str(table.family[row])][labels[action]] += 1
        histogram[f"{table.family[row]}.{table.qtype[row]}"][labels[action]] += 1
    return {"n": len(rows), **point(table, rows, actions, confidence),
            "accuracy": mean_ci(table.score[rows, actions]), "latency_source": latency_source(table),
            "actions": {name: dict(sorted(c.items())) for name, c in sorted(histogram.items())}}


def evaluate_policy(policy_dir: Path, split: str | None = None, trust_pickle: bool = False,
                    allow_other_table: bool = False, weight: float | None = None) -> dict:
    """Summarise a saved policy's choices on its held-out rows, or on every question of another split's table; a
    weight-conditioned policy at `weight` (required for it, refused for any other)."""
    policy = SavedPolicy.load(policy_dir, trust_pickle)
    alpha, gamma = policy.weights(weight)  # a missing or refused weight is named before the table is read
    table, rows = policy.evaluation_rows(split, allow_other_table)
    steps = policy.play(table, rows, weight=weight)
    conditioned = {"weight": weight, "weight_max": policy.config.weight_max} if policy.config.conditioned else {}
    return {"policy": str(policy_dir), "alpha": alpha, "gamma": gamma, **conditioned,
            "split": table.provenance.get("split"), "rows": "held-out" if split is None else "all",
            **summarize(table, steps["row"], steps["action"], policy.confidence)}


def add_trust_pickle(parser: argparse.ArgumentParser) -> None:
    """The --trust-pickle flag of the commands that load policies."""
    parser.add_argument("--trust-pickle", action="store_true",
                        help=f"load an old policy folder that has only SB3's pickled policy.zip (no {ACTOR_FILE}); "
                             "unpickling can run code, so only for folders you made yourself")


def add_allow_other_table(parser: argparse.ArgumentParser) -> None:
    """The --allow-other-table flag of the commands that evaluate a policy on an outcome table."""
    parser.add_argument("--allow-other-table", action="store_true",
                        help="evaluate on an outcome table built from another Stage A checkpoint than the policy's "
                             "training table (a warning instead of exit 2)")


def format_table(result: dict) -> str:
    """A readable summary: headline figures, then the action histogram per family and type."""
    lo, hi = result["accuracy"]["ci95"]
    at = f", weight {result['weight']:g} of [0, {result['weight_max']:g}]" if "weight" in result else ""
    lines = [f"policy {result['policy']} (alpha {result['alpha']:g}, gamma {result['gamma']:g}{at}), "
             f"{result['n']} questions ({result['rows']} rows of split {result['split']})",
             f"accuracy {100 * result['accuracy']['mean']:.2f} % [{100 * lo:.2f}, {100 * hi:.2f}]; "
             f"{result['gflops_per_query']:.4f} GFLOPs and {result['latency_ms']:.2f} ms per question; "
             f"audio on {100 * result['audio_rate']:.1f} %",
             (f"latency p50 {result['latency_p50_ms']:.2f} ms, p95 {result['latency_p95_ms']:.2f} ms "
              f"(over {SOURCES[result['latency_source']]})"),
             "", f"{'family / type':<28} actions"]
    lines += [f"{name:<28} {counts}" for name, counts in result["actions"].items()]
    return "\n".join(lines)


@console("stage_b-eval")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="stage_b-eval", description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, required=True, help="folder written by stage_b-train")
    parser.add_argument("--split", default=None,
                        help="evaluate on all questions of outcomes_<split>.npz beside the training table "
                             "(default: the training table's held-out rows)")
    parser.add_argument("--weight", type=float, default=None,
                        help="the cost weight to play a weight-conditioned policy at (stage_b-train --weight-max), "
                             "in [0, weight_max]; required for such a policy, refused for any other")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_trust_pickle(parser)
    add_allow_other_table(parser)
    args = parser.parse_args(argv)
    setup_logging()
    result = evaluate_policy(args.policy, args.split, args.trust_pickle, args.allow_other_table, args.weight)
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
