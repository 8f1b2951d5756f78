"""Benchmark: what one Stage A evaluation costs (stage_a.evaluate.Evaluator), on the micro world by default.

Run: python benchmarks/stage_a_eval_cost.py [--preset stage_a_micro] [--repeats 5] [--threads 1]
Builds the run's setup (a seeded fresh bridge; its zero-initialised outputs are filled with seeded noise, std 0.02,
so the bridge acts), then measures on the val and test splits: building the evaluator (the bare base's answers and
logits, measured once per run) and `run()` (what `stage_a-train` pays at every `eval_every`; test also with
`detail=True`, as at the end of a run). Figures are medians over repeats, in seconds, from one run on one machine,
with the gate-0 figures of the last evaluation (their VL rows run in mixed batches, each beside its gate-1 twin,
stage_a.exactness). One torch thread by default, so other processes on a small machine disturb the figures less.
Results go to benchmarks/results/stage_a_eval_cost.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from shared.benchmark import save_result
from shared.config import load_config
from shared.logs import setup_logging
from stage_a.config import TrainConfig
from stage_a.evaluate import EvalSettings, Evaluator, eval_rows
from stage_a.exactness import fill_zero_init
from stage_a.setup import build_setup

OUT = Path(__file__).parent / "results" / "stage_a_eval_cost.json"


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls, and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 3), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="stage_a_micro")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    setup_logging()
    torch.set_num_threads(args.threads)
    cfg = load_config(TrainConfig, args.preset)
    setup = build_setup(cfg, splits=("val", "test"))
    fill_zero_init(setup.model, seed=cfg.seed, std=0.02)
    settings = EvalSettings(k=cfg.k_eval, batch_size=cfg.eval_batch_size)
    figures = {}
    with torch.no_grad():
        for name, split, size in (("val", setup.val, cfg.data.eval_size), ("test", setup.test, cfg.data.test_size)):
            rows = eval_rows(split, size, cfg.seed)
            build_s, evaluator = timed(lambda: Evaluator(setup.model, setup.collator, split, rows, settings),
                                       args.repeats)
            run_s, result = timed(evaluator.run, args.repeats)
            figures[name] = {"rows": len(rows), "vl_rows": result["n"]["vl"], "build_s": build_s, "run_s": run_s,
                             **{key: result[key] for key in ("gate0_max_abs_logit_diff", "gate0_mixed_rows",
                                                             "gate0_answers_differ", "vl_acc_gate0", "vl_acc_base")}}
            if name == "test":
                figures[name]["run_detail_s"], _ = timed(lambda: evaluator.run(detail=True), args.repeats)
    save_result({"preset": args.preset, "k_eval": settings.k, "eval_batch_size": settings.batch_size,
                 "repeats": args.repeats, **figures}, args.out)


if __name__ == "__main__":
    main()
