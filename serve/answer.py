"""`safe-answer`: answer one question, or a JSONL of questions, with a trained SAFE bridge (and optionally a policy).

Each JSONL line is {"image": path|null, "audio": path|null, "question": str, "k": int|"auto"|null}. With `--policy`
a Stage B policy chooses no audio or k for every question whose k is not given (stage_b.chooser). Exit 2 with
one line naming the problem on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared.cli import ArgumentParser, check_number, console
from shared.loading import load_jsonl
from shared.logs import setup_logging
from stage_a.checkpointing import bridge_folder
from stage_a.config import DTYPES
from stage_a.model import bridge_k_max
from stage_a.pipeline import SafePipeline
from stage_a.setup import check_model_path
from stage_b.actor import ACTOR_FILE
from stage_b.chooser import PolicyChooser

KEYS = ("image", "audio", "question", "k")


def parse_k(value: str) -> int | str:
    """--k: an int, or 'auto' (the policy decides)."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}; expected an int or 'auto'") from None


def read_jsonl(path: Path) -> list[dict]:
    """The questions of a JSONL file; a bad line is an error naming the file, line and problem."""
    rows = []
    for n, row in load_jsonl(path, "questions, one JSON object per line"):
        if not isinstance(row, dict) or set(row) - set(KEYS):
            found = sorted(set(row) - set(KEYS)) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"{path} line {n}: unexpected {found}; expected an object with keys {', '.join(KEYS)}")
        rows.append(row)
    return rows


@console("safe-answer")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="safe-answer", description=__doc__.splitlines()[0])
    parser.add_argument("--bridge", required=True, type=Path, help="bridge folder or stage_a-train run folder")
    parser.add_argument("--question", default=None)
    parser.add_argument("--image", default=None)
    parser.add_argument("--audio", default=None)
    parser.add_argument("--k", type=parse_k, default=None,
                        help="audio tokens, 0 for none, or 'auto' (default: 'auto' with --policy, else the run's k_eval)")
    parser.add_argument("--jsonl", type=Path, default=None, help='questions, one {"image","audio","question","k"} a line')
    parser.add_argument("--policy", type=Path, default=None, help="stage_b-train policy folder that chooses k")
    parser.add_argument("--trust-pickle", action="store_true",
                        help=f"load a policy folder with only SB3's pickled policy.zip (no {ACTOR_FILE})")
    parser.add_argument("--base", default=None, help="override the recorded base model id or folder")
    parser.add_argument("--clap", default=None, help="override the recorded CLAP id or folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object per answer")
    parser.add_argument("--no-strict", action="store_true", help="load onto another base or encoder, with a warning")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="base model dtype (default: %(default)s)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if (args.jsonl is None) == (args.question is None):
        raise ValueError("give exactly one of --question or --jsonl")
    rows = read_jsonl(args.jsonl) if args.jsonl else [
        {"image": args.image, "audio": args.audio, "question": args.question, "k": args.k}]
    for flag, value in (("--base", args.base), ("--clap", args.clap)):
        check_model_path(flag, value or "")
    k_max = bridge_k_max(bridge_folder(args.bridge))  # checked before anything loads
    for n, row in enumerate(rows, 1):
        if row.get("k") not in (None, "auto"):
            check_number(f"{args.jsonl} question {n}: k" if args.jsonl else "--k", row["k"], ge=0, le=k_max,
                         integer=True)
    policy = PolicyChooser.load(args.policy, args.trust_pickle) if args.policy else None
    pipe = SafePipeline.from_pretrained(args.bridge, base=args.base, clap=args.clap, device=args.device,
                                        dtype=args.dtype, strict=not args.no_strict, policy=policy)
    results = pipe(**{key: [row.get(key) for row in rows] for key in KEYS})
    for result in results:
        print(json.dumps(result) if args.json else result["answer"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
