"""What one `stage_b-pareto` sweep is: its reward components, `ParetoConfig`, and the command line that builds it.

stage_b.pareto runs a sweep; this module only describes and checks one (the flags are documented there). Under a
non-embedded `--cost-profile` the sweep is first moved onto its table recounted by stage_b.cost_profiles
(`ParetoConfig.profiled`), so the weight grids, reward scale, policies, baselines and budgets all see the
profile's GFLOPs; such a profile recounts compute only, so it takes the alpha component alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np

from envs.audio_budget import BUDGET
from envs.outcome_table import DEFAULT_TABLE, OutcomeTable
from envs.weight_conditioned import DEFAULT_DRAW
from shared.cli import ArgumentParser, InputError, check_number, name_list, number_list
from stage_b.baselines import BASELINES
from stage_b.cost_profiles import EMBEDDED, check_profile_name, profiled_tables
from stage_b.plot import AXES
from stage_b.train import PolicyConfig
from stage_b.weight_grid import derive_grids

COMPONENTS = {"alpha": (1.0, 0.0), "gamma": (0.0, 1.0), "both": (1.0, 1.0)}  # (alpha, gamma) per unit weight
EVAL_WEIGHTS = 40  # --conditioned: weights each conditioned policy (and every weighted baseline) is evaluated at


def weighted(component: str, weight: float) -> tuple[float, float]:
    """(alpha, gamma) of `component` at weight `weight`."""
    return COMPONENTS[component][0] * weight, COMPONENTS[component][1] * weight


def evaluation_grid(weight_max: float, count: int) -> list[float]:
    """`count` weights evenly spaced from 0 to `weight_max`, both included: a conditioned policy's evaluation grid."""
    return np.linspace(0.0, weight_max, count).tolist()


@dataclass
class ParetoConfig:
    """One `stage_b-pareto` sweep: table, output folder, weights (None: derived per component), seeds, components,
    PPO budget, baselines, episode compute budgets, plot axis, cost profile and, with `conditioned`, one
    weight-conditioned policy per component and seed evaluated at `eval_weights` weights (default EVAL_WEIGHTS)."""

    table: Path
    out: Path
    weights: tuple[float, ...] | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    components: tuple[str, ...] = tuple(COMPONENTS)
    timesteps: int = 100_000
    n_envs: int = 8
    workers: int = 2
    split: str | None = None
    confidence: bool = False
    baselines: tuple[str, ...] | None = None  # None: every baseline the table allows (stage_b.baselines)
    budgets: tuple[float, ...] = ()
    axis: str = "gflops"
    cost_profile: str = EMBEDDED
    conditioned: bool = False
    eval_weights: int | None = None  # None: EVAL_WEIGHTS with `conditioned`; refused without it
    weight_draw: str = DEFAULT_DRAW  # the conditioned policies' training weights (stage_b-train --weight-draw)

    def __post_init__(self) -> None:
        if self.weights == () or not self.seeds:
            raise ValueError(f"--alphas is {self.weights} and --seeds {list(self.seeds)}; expected values in both")
        for weight in self.weights or ():
            check_number("--alphas item", weight, ge=0)
        if self.axis not in AXES:
            raise ValueError(f"--axis is {self.axis!r}; expected one of {list(AXES)}")
        for seed in self.seeds:
            check_number("--seeds item", seed, ge=0, integer=True)
        unknown = [c for c in self.components if c not in COMPONENTS]
        if not self.components or unknown:
            raise ValueError(f"--components has {unknown or 'no values'}; expected a subset of {list(COMPONENTS)}")
        for flag, value in (("--timesteps", self.timesteps), ("--n-envs", self.n_envs), ("--workers", self.workers)):
            check_number(flag, value, ge=1, integer=True)
        unknown = [b for b in self.baselines or () if b not in BASELINES]
        if unknown:
            raise ValueError(f"--baselines has {unknown}; expected a subset of {list(BASELINES)} (or none)")
        for budget in self.budgets:
            check_number("--budget item", budget, **BUDGET)
        if self.budgets and self.confidence:
            raise InputError("--budget with --confidence is not supported: the confidence's base run changes the "
                             "maximum compute a budget is a fraction of, so PPO and the static policies it is compared "
                             "with would get different budgets; expected one of the two flags")
        if self.weight_draw != DEFAULT_DRAW and not self.conditioned:
            raise InputError(f"--weight-draw {self.weight_draw} without --conditioned: only weight-conditioned "
                             "policies draw weights; expected --weight-draw only with --conditioned")
        if self.eval_weights is not None and not self.conditioned:
            raise InputError(f"--eval-weights {self.eval_weights} without --conditioned: a per-weight sweep evaluates "
                             "each policy at its own weight; expected --eval-weights only with --conditioned")
        if self.conditioned:
            self.eval_weights = check_number("--eval-weights", EVAL_WEIGHTS if self.eval_weights is None
                                             else self.eval_weights, ge=2, integer=True)
            if self.weights is not None and max(self.weights) == 0:
                raise InputError(f"--alphas is {list(self.weights)} with --conditioned: the largest weight is the "
                                 "policies' weight_max; expected a weight > 0")
        check_profile_name(self.cost_profile)
        latency = [c for c in self.components if COMPONENTS[c][1] > 0]
        if self.cost_profile != EMBEDDED and latency:
            raise ValueError(f"--components has {latency} with --cost-profile {self.cost_profile}: the profile "
                             "recounts compute only, latency_ms stays the embedded machine's measurement; "
                             "expected alpha")
        self.table = self.table.resolve()

    def profiled(self) -> ParetoConfig:
        """This sweep on its table recounted under `cost_profile` (stage_b.cost_profiles.profiled_tables writes it to
        OUT/tables/; under `embedded` the table itself): `run_sweep` starts with it, so that everything derived from
        the table (weight grids, reward scale, baselines, budgets, evaluation) counts the profile's GFLOPs."""
        return replace(self, table=profiled_tables(self.table, self.split, self.out, self.cost_profile))

    @cached_property
    def weight_grids(self) -> dict[str, dict]:
        """Component -> {"source", "weights", ...}: `--alphas` for every component, or each one's grid derived on the
        training rows and reward scale that every policy of the sweep shares (those of its first policy)."""
        if self.weights is not None:
            return {c: {"source": "--alphas", "weights": sorted(set(self.weights))} for c in self.components}
        return derive_grids(OutcomeTable.load(self.table), self.policy(self.components[0], 0.0, 0),
                            {c: COMPONENTS[c] for c in self.components})

    def weight_max(self, component: str) -> float:
        """The top of `component`'s grid (its last derived weight, or the largest of --alphas): the weight_max of its
        conditioned policies."""
        return max(self.weight_grids[component]["weights"])

    def evaluation_weights(self, component: str) -> list[float]:
        """The weights `component` is evaluated at, by PPO and the weighted baselines alike: its grid (`weight_grids`),
        or with `conditioned` the `evaluation_grid` of `eval_weights` weights up to its weight_max."""
        if self.conditioned:
            return evaluation_grid(self.weight_max(component), self.eval_weights)
        return self.weight_grids[component]["weights"]

    def play_weights(self, config: PolicyConfig) -> list[float | None]:
        """The weights one policy of the sweep is played at: the evaluation grid of a conditioned policy, else
        [None] (its own weight)."""
        return evaluation_grid(config.weight_max, self.eval_weights) if config.conditioned else [None]

    def grid(self) -> list[tuple[str, float, float, float]]:
        """(component, weight, alpha, gamma) of every evaluated point of the sweep, by component then weight
        (`evaluation_weights`)."""
        return [(c, w, *weighted(c, w)) for c in self.components for w in self.evaluation_weights(c)]

    def policy(self, component: str, weight: float, seed: int) -> PolicyConfig:
        """The training config of one policy of the sweep."""
        alpha, gamma = weighted(component, weight)
        return PolicyConfig(str(self.table), alpha=alpha, gamma=gamma, confidence=self.confidence, seed=seed,
                            timesteps=self.timesteps, n_envs=self.n_envs)

    def conditioned_policy(self, component: str, seed: int) -> PolicyConfig:
        """The training config of one weight-conditioned policy: the component's units, its weight_max."""
        alpha, gamma = COMPONENTS[component]
        return PolicyConfig(str(self.table), alpha=alpha, gamma=gamma, confidence=self.confidence, seed=seed,
                            timesteps=self.timesteps, n_envs=self.n_envs, weight_max=self.weight_max(component),
                            weight_draw=self.weight_draw)

    def policies(self) -> dict[str, PolicyConfig]:
        """Folder name -> training config, for every policy of the sweep: <component>-w<weight>-seed<seed> per
        weight, or with `conditioned` <component>-conditioned-seed<seed>."""
        seeds = sorted(set(self.seeds))
        if self.conditioned:
            return {f"{c}-conditioned-seed{s}": self.conditioned_policy(c, s) for c in self.components for s in seeds}
        return {f"{c}-w{w:g}-seed{s}": self.policy(c, w, s) for c, w, _, _ in self.grid() for s in seeds}


def parse_sweep(argv: list[str] | None, description: str) -> ParetoConfig:
    """The sweep `stage_b-pareto`'s command line `argv` asks for; a bad flag is an InputError or ValueError."""
    parser = ArgumentParser(prog="stage_b-pareto", description=description)
    parser.add_argument("--table", type=Path, default=Path(DEFAULT_TABLE),
                        help=f"outcome table (.npz) from stage_b-outcomes (default: {DEFAULT_TABLE})")
    parser.add_argument("--out", type=Path, default=Path("runs") / "stage_b" / "pareto")
    parser.add_argument("--alphas", default=None,
                        help="comma-separated reward weights w, used by every component (default: each component's "
                             "grid derived from the table, from 0 to where the oracle skips audio)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--components", default=None,
                        help="alpha (compute), gamma (latency), both (alpha = gamma = w); default: all three, "
                             "or alpha alone under a non-embedded --cost-profile")
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="training processes")
    parser.add_argument("--confidence", action="store_true",
                        help="policies observe the no-audio confidence and pay for it (so do their random twins)")
    parser.add_argument("--split", default=None,
                        help="evaluate on all of outcomes_<split>.npz beside the table (default: held-out rows)")
    parser.add_argument("--baselines", default=None,
                        help=f"non-RL baselines, comma-separated from {','.join(BASELINES)}, or none (default: all; "
                             "cascade only if the table has the no-audio confidence)")
    parser.add_argument("--budget", default=None,
                        help="comma-separated episode compute budgets, fractions of the maximum in (0, 1]: PPO "
                             "policies (alpha = gamma = 0, the sweep's seeds) train under each, against the best "
                             "static policy through the same budget (budget.csv, budget.png)")
    parser.add_argument("--axis", default="gflops",
                        help=f"x axis of a second plot, one of {list(AXES)}: latency_p95 also plots accuracy against "
                             "p95 latency (pareto_latency_p95.png); pareto.png is always against GFLOPs")
    parser.add_argument("--conditioned", action="store_true",
                        help="train one weight-conditioned policy per component and seed (stage_b-train --weight-max, "
                             "weight_max the top of the component's grid) instead of one per weight, and evaluate it, "
                             "and the weighted baselines, at --eval-weights weights")
    parser.add_argument("--eval-weights", type=int, default=None,
                        help=f"with --conditioned: evaluation weights, evenly spaced from 0 to weight_max "
                             f"(default {EVAL_WEIGHTS})")
    parser.add_argument("--weight-draw", default=DEFAULT_DRAW,
                        help="with --conditioned: how the policies' training episodes draw their weight (stage_b-train "
                             "--weight-draw)")
    parser.add_argument("--cost-profile", default=EMBEDDED,
                        help="recount the table's GFLOPs for real models (configs/cost_profiles; default: embedded, "
                             "the table's own)")
    args = parser.parse_args(argv)
    components = args.components or (",".join(COMPONENTS) if args.cost_profile == EMBEDDED else "alpha")
    baselines = None if args.baselines is None else name_list("--baselines", args.baselines, BASELINES, none="none")
    weights = None if args.alphas is None else number_list("--alphas", args.alphas, float)
    return ParetoConfig(args.table, args.out, weights, number_list("--seeds", args.seeds, int),
                        tuple(c.strip() for c in components.split(",") if c.strip()), args.timesteps,
                        args.n_envs, args.workers, args.split, args.confidence, baselines,
                        () if args.budget is None else number_list("--budget", args.budget, float, **BUDGET),
                        args.axis, args.cost_profile, args.conditioned, args.eval_weights, args.weight_draw)
