"""`safe-data`: convert official dataset files into manifests, merge manifests, check them.

  safe-data convert FORMAT ... --out M.jsonl   FORMAT: vqav2, gqa, audiocaps, clotho-aqa, music-avqa
  safe-data merge A.jsonl B.jsonl ... --out MIXED.jsonl [--shuffle --seed N]
  safe-data check M.jsonl                      writes M.clean.jsonl and M.report.json

Every sample keeps its dataset in `source`, so a merged manifest (e.g. VQAv2 for retention
plus AudioCaps for audio) is still scored per dataset. Media paths below a manifest's folder
are written relative to it, others absolute; merge and check rewrite relative paths so they
still resolve from the new manifest's folder. Image converters default to the official
.jpg names; `--image-ext png` (`--frame-ext png` for MUSIC-AVQA) reads lossless copies such
as those `safe-world export` writes.

convert and merge refuse an existing --out manifest unless --overwrite is given (a run may have been
trained on it); check rewrites its clean manifest and report, which follow from the manifest alone.

Exit codes: 0 success (check: nothing excluded), 1 check excluded samples, 2 usage or
input error (one line on stderr naming the file).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

from shared.cli import (EXIT_FINDING, EXIT_INPUT, EXIT_OK, ArgumentParser, add_overwrite_flag, check_number, console,
                        refuse_overwrite)
from shared.data.audiocaps import CAPTION_PROMPT, CLIP_SECONDS, load_audiocaps
from shared.data.check import MIN_DURATION, MIN_IMAGE_SIDE, CheckReport, check_manifest
from shared.data.clotho_aqa import load_clotho_aqa
from shared.data.gqa import load_gqa
from shared.data.music_avqa import load_music_avqa
from shared.data.schema import ManifestError, Sample, read_manifest, write_manifest
from shared.data.vqav2 import load_vqav2

MAX_LISTED = 10
# The numeric flags of the subcommands and their ranges (shared.cli.check_number), checked before any file is read.
LIMITS = {"sample_rate": ("--sample-rate", {"ge": 1, "integer": True, "optional": True}),
          "min_duration": ("--min-duration", {"ge": 0}), "silence_threshold": ("--silence-threshold", {"ge": 0}),
          "end_tolerance": ("--end-tolerance", {"ge": 0}), "clip_seconds": ("--clip-seconds", {"gt": 0}),
          "num_frames": ("--num-frames", {"ge": 1, "integer": True, "optional": True})}


@console("safe-data")
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `safe-data` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        for name, (flag, bounds) in LIMITS.items():
            if hasattr(args, name):
                check_number(flag, getattr(args, name), **bounds)
        return args.run(args)
    except (OSError, ValueError) as err:
        # Missing files (OSError) and malformed input (ManifestError, AudioError: ValueError).
        print(f"safe-data: error: {err}", file=sys.stderr)
        return EXIT_INPUT


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="safe-data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_check(commands)
    _add_convert(commands)
    _add_merge(commands)
    return parser


def _add_check(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "check", help="check a manifest's media and write a clean manifest and a report",
        description="Check every sample of MANIFEST (missing/unreadable/truncated/silent/NaN/short audio, "
        "missing/unreadable/too small images, duplicate ids, audio-visual misalignment). Writes "
        "DIR/<stem>.clean.jsonl (samples with no excluding problem) and DIR/<stem>.report.json. "
        "Exit code 0 if nothing was excluded, 1 if some samples were, 2 on bad input.",
    )
    p.add_argument("manifest", type=Path, help="JSONL manifest to check")
    p.add_argument("--out", type=Path, help="output folder (default: the manifest's folder)")
    p.add_argument("--sample-rate", type=int, help="expected audio file rate in Hz (mismatch is a warning)")
    p.add_argument("--min-duration", type=float, default=MIN_DURATION,
                   help="shortest usable audio window, s (default %(default)s: shorter is a cutting error)")
    p.add_argument("--strict-sample-rate", action="store_true", help="exclude samples whose audio rate differs")
    p.add_argument("--silence-threshold", type=float, default=1e-4,
                   help="a window whose peak is below this is silent (default 1e-4)")
    p.add_argument("--end-tolerance", type=float, default=0.5,
                   help="seconds a window may end past its file's end before exclusion (default 0.5)")
    p.add_argument("--min-image-side", type=int, default=MIN_IMAGE_SIDE,
                   help="smallest usable image width and height, px (default %(default)s: smaller is degenerate)")
    p.add_argument("--quick-images", action="store_true",
                   help="read image headers only, do not decode pixels (faster; misses truncated image data)")
    p.add_argument("--json", action="store_true", help="print the full JSON report instead of a table")
    p.set_defaults(run=_run_check)


def _add_convert(commands: argparse._SubParsersAction) -> None:
    convert = commands.add_parser("convert", help="turn official dataset files into a manifest",
                                  description="Read a dataset's official files and write a JSONL manifest. "
                                  "Media under the manifest's folder get relative paths, others absolute ones.")
    datasets = convert.add_subparsers(dest="dataset", required=True)

    def add(name: str, description: str) -> argparse.ArgumentParser:
        p = datasets.add_parser(name, help=description, description=description)
        p.add_argument("--out", type=Path, required=True, help="manifest to write (.jsonl)")
        add_overwrite_flag(p, "the manifest")
        return p

    p = add("vqav2", "VQAv2: questions + annotations JSON, COCO images COCO_{split}_{id:012d}.jpg")
    p.add_argument("--questions", type=Path, required=True,
                   help="e.g. v2_OpenEnded_mscoco_val2014_questions.json")
    p.add_argument("--annotations", type=Path, required=True, help="e.g. v2_mscoco_val2014_annotations.json")
    p.add_argument("--images", type=Path, required=True, help="COCO image folder, e.g. val2014/")
    p.add_argument("--split", help="COCO image set (default: the questions file's data_subtype)")
    _add_image_ext(p, "--image-ext")
    p.set_defaults(run=_converter(lambda a: load_vqav2(a.questions, a.annotations, a.images, a.split,
                                                       image_ext=a.image_ext)))

    p = add("gqa", "GQA: a questions JSON keyed by question id, images {imageId}.jpg")
    p.add_argument("--questions", type=Path, required=True, help="e.g. testdev_balanced_questions.json")
    p.add_argument("--images", type=Path, required=True, help="GQA image folder")
    _add_image_ext(p, "--image-ext")
    p.set_defaults(run=_converter(lambda a: load_gqa(a.questions, a.images, image_ext=a.image_ext)))

    p = add("audiocaps", "AudioCaps: CSV audiocap_id,youtube_id,start_time,caption; one sample per clip")
    p.add_argument("--csv", type=Path, required=True, help="e.g. test.csv")
    p.add_argument("--audio", type=Path, required=True, help="audio folder")
    p.add_argument("--pattern", default="{youtube_id}.wav",
                   help="audio file name; fields {youtube_id}, {start_time} (default {youtube_id}.wav)")
    p.add_argument("--clips-are-cut", action="store_true",
                   help="files are already the 10 s clips: window [0, 10) instead of [start, start+10)")
    p.add_argument("--clip-seconds", type=float, default=CLIP_SECONDS, help="clip length (default 10)")
    p.add_argument("--prompt", default=CAPTION_PROMPT, help=f"question text (default {CAPTION_PROMPT!r})")
    p.set_defaults(run=_converter(lambda a: load_audiocaps(
        a.csv, a.audio, clip_files_are_cut=a.clips_are_cut, audio_pattern=a.pattern,
        clip_seconds=a.clip_seconds, prompt=a.prompt)))

    p = add("clotho-aqa", "Clotho-AQA: CSV file_name,QuestionText,answer,confidence (one row per "
            "annotator answer); one audio-only sample per (file, question)")
    p.add_argument("--csv", type=Path, required=True, help="e.g. clotho_aqa_test.csv")
    p.add_argument("--audio", type=Path, required=True, help="audio folder holding each file_name, e.g. audio_files/")
    p.set_defaults(run=_converter(lambda a: load_clotho_aqa(a.csv, a.audio)))

    p = add("music-avqa", "MUSIC-AVQA: avqa-{train,val,test}.json, audio {video_id}.wav, 1-fps frames")
    p.add_argument("--json", type=Path, required=True, help="e.g. avqa-test.json")
    p.add_argument("--audio", type=Path, required=True, help="audio folder with {video_id}.wav")
    p.add_argument("--frames", type=Path, help="frame folder with {video_id}/000001.jpg ... (frame k at k-1 s)")
    p.add_argument("--num-frames", type=int,
                   help="frames per video (named without listing folders; default: list each folder)")
    p.add_argument("--pattern", default="{video_id}.wav", help="audio file name (default {video_id}.wav)")
    _add_image_ext(p, "--frame-ext")
    p.set_defaults(run=_converter(lambda a: load_music_avqa(
        a.json, a.audio, a.frames, num_frames=a.num_frames, audio_pattern=a.pattern, frame_ext=a.frame_ext)))


def _add_image_ext(p: argparse.ArgumentParser, flag: str) -> None:
    p.add_argument(flag, default="jpg", help="image file extension (default jpg, the official one; "
                   "png for the lossless files of `safe-world export`)")


def _add_merge(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "merge", help="concatenate manifests into one (e.g. VQAv2 for retention + AudioCaps for audio)",
        description="Concatenate manifests in the order given (or shuffled with --shuffle --seed N). "
        "Relative media paths are rewritten to resolve from the output's folder; an id used twice "
        "is an error naming both files. Prints the number of samples per source.",
    )
    p.add_argument("manifests", type=Path, nargs="+", help="JSONL manifests to merge")
    p.add_argument("--out", type=Path, required=True, help="merged manifest to write (.jsonl)")
    add_overwrite_flag(p, "the manifest")
    p.add_argument("--shuffle", action="store_true", help="shuffle the merged samples")
    p.add_argument("--seed", type=int, help="shuffle seed (default 0; only with --shuffle)")
    p.set_defaults(run=_run_merge)


def _converter(load: Callable[[argparse.Namespace], list[Sample]]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        refuse_overwrite(args.out, args.overwrite)
        samples = load(args)
        root = _absolute(args.out.parent)
        write_manifest([_relocate(s, lambda p: _portable(_absolute(p), root)) for s in samples], args.out)
        print(f"wrote {len(samples)} samples to {args.out}")
        return EXIT_OK
    return run


def _run_merge(args: argparse.Namespace) -> int:
    if args.seed is not None and not args.shuffle:
        raise ValueError(f"--seed {args.seed} is given without --shuffle; expected both or neither")
    out_dir = _absolute(args.out.parent)
    if any(_absolute(m) == _absolute(args.out) for m in args.manifests):
        raise ValueError(f"--out {args.out} is also an input manifest; expected a new file")
    refuse_overwrite(args.out, args.overwrite)
    merged = merge_manifests(args.manifests, out_dir)
    seed = 0 if args.seed is None else args.seed
    if args.shuffle:
        random.Random(seed).shuffle(merged)
    write_manifest(merged, args.out)
    counts = Counter(s.source for s in merged)
    order = f" (shuffled, seed {seed})" if args.shuffle else ""
    print(f"wrote {len(merged)} samples from {len(args.manifests)} manifests to {args.out}{order}")
    width = max(len(source) for source in counts) if counts else 0
    for source, n in sorted(counts.items()):
        print(f"  {source:<{width}}  {n}")
    return EXIT_OK


def merge_manifests(paths: Sequence[Path], out_dir: Path) -> list[Sample]:
    """The samples of `paths` in order, media paths made to resolve from `out_dir`; ids must be unique."""
    seen: dict[str, str] = {}
    merged = []
    for path in paths:
        move = _rebase(_absolute(path.parent), out_dir)
        for number, sample in enumerate(read_manifest(path, resolve_paths=False), start=1):
            where = f"{path} (sample {number})"
            if sample.id in seen:
                raise ManifestError(f"{where}: id {sample.id!r} is already used by {seen[sample.id]}; "
                                    "expected ids unique across the merged manifests")
            seen[sample.id] = where
            merged.append(_relocate(sample, move))
    return merged


def _run_check(args: argparse.Namespace) -> int:
    manifest: Path = args.manifest
    samples = read_manifest(manifest)
    raw = read_manifest(manifest, resolve_paths=False)
    report = check_manifest(
        samples, sample_rate=args.sample_rate, min_duration=args.min_duration,
        silence_threshold=args.silence_threshold, strict_sample_rate=args.strict_sample_rate,
        end_tolerance=args.end_tolerance, decode_images=not args.quick_images, min_image_side=args.min_image_side,
        progress=sys.stderr.isatty(),
    )
    src, out_dir = _absolute(manifest.parent), _absolute(args.out or manifest.parent)
    clean = [raw[i] for i in report.kept_indices]
    if out_dir.resolve() != src.resolve():
        # Relative paths resolve against the manifest's folder, so they must follow it.
        clean = [_relocate(s, _rebase(src, out_dir)) for s in clean]
    stem = manifest.name.removesuffix(".jsonl")
    clean_path = write_manifest(clean, out_dir / f"{stem}.clean.jsonl")
    report_path = out_dir / f"{stem}.report.json"
    payload = {"manifest": str(manifest), "clean_manifest": str(clean_path), **report.to_json()}
    report_path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(payload, indent=2, ensure_ascii=False))
    else:
        _print_table(report, manifest, clean_path, report_path)
    return EXIT_FINDING if report.excluded else EXIT_OK


def _print_table(report: CheckReport, manifest: Path, clean_path: Path, report_path: Path) -> None:
    print(f"{manifest}: {report.total} samples, {len(report.clean)} kept, {report.excluded} excluded")
    counts = report.counts()
    if counts:
        severity = {p.kind: ("error" if p.excluding else "warning") for p in report.problems}
        width = max(len(k) for k in counts)
        print(f"  {'problem':<{width}}  {'severity':<8}  count")
        for kind, n in counts.items():
            print(f"  {kind:<{width}}  {severity[kind]:<8}  {n}")
    for entry in report.excluded_samples()[:MAX_LISTED]:
        print(f"  excluded #{entry['index']} {entry['id']}: {', '.join(entry['kinds'])}")
    if report.excluded > MAX_LISTED:
        print(f"  ... {report.excluded - MAX_LISTED} more in the report")
    print(f"clean manifest: {clean_path}")
    print(f"report: {report_path}")


def _absolute(path: str | os.PathLike) -> Path:
    """Absolute and normalised, without resolving symlinks (datasets are often linked in)."""
    return Path(os.path.abspath(path))


def _portable(path: Path, root: Path) -> str:
    """`path` relative to `root` when it lies below it, else absolute."""
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _rebase(src: Path, out_dir: Path) -> Callable[[str], str]:
    """Move a manifest path written relative to `src` so it resolves from `out_dir` (absolute ones stay)."""
    return lambda p: p if os.path.isabs(p) else _portable(_absolute(src / p), out_dir)


def _relocate(sample: Sample, move: Callable[[str], str]) -> Sample:
    """Apply `move` to every media path of a sample."""
    return dataclasses.replace(
        sample,
        image=None if sample.image is None else move(sample.image),
        audio=None if sample.audio is None else move(sample.audio),
        frames=tuple(move(f) for f in sample.frames),
    )
