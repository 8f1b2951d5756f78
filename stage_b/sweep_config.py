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

from envs.audio_budget import BUDGET
from envs.outcome_table import DEFAULT_TABLE, OutcomeTable
from shared.cli import ArgumentParser, InputError, check_number, name_list, number_list
from stage_b.baselines import BASELINES
from stage_b.cost_profiles import EMBEDDED, check_profile_name, profiled_tables
from stage_b.plot import AXES
from stage_b.train import PolicyConfig
from stage_b.weight_grid import derive_grids

COMPONENTS = {"alpha": (1.0, 0.0), "gamma": (0.0, 1.0), "both": (1.0, 1.0)}  # (alpha, gamma) per unit weight


def weighted(component: str, weight: float) -> tuple[float, float]:
    """(alpha, gamma) of `component` at weight `weight`."""
    return COMPONENTS[component][0] * weight, COMPONENTS[component][1] * weight


@dataclass
class ParetoConfig:
    """One `stage_b-pareto` sweep: table, output folder, weights (None: derived per component), seeds, components,
    PPO budget, baselines, episode compute budgets, plot axis and cost profile."""

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

    def grid(self) -> list[tuple[str, float, float, float]]:
        """(component, weight, alpha, gamma) of every point of the sweep, by component then weight (`weight_grids`)."""
        return [(c, w, *weighted(c, w)) for c in self.components for w in self.weight_grids[c]["weights"]]

    def policy(self, component: str, weight: float, seed: int) -> PolicyConfig:
        """The training config of one policy of the sweep."""
        alpha, gamma = weighted(component, weight)
        return PolicyConfig(str(self.table), alpha=alpha, gamma=gamma, confidence=self.confidence, seed=seed,
                            timesteps=self.timesteps, n_envs=self.n_envs)

    def policies(self) -> dict[str, PolicyConfig]:
        """Folder name (<component>-w<weight>-seed<seed>) -> training config, for every policy of the sweep."""
        return {f"{c}-w{w:g}-seed{s}": self.policy(c, w, s) for c, w, _, _ in self.grid()
                for s in sorted(set(self.seeds))}


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
                        args.axis, args.cost_profile)
