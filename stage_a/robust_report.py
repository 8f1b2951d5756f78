"""Summaries, targets, tables and plots of the robustness study (stage_a.robust).

A condition's records hold, per question, its id, family, type, whether its dataset is accuracy-scored, SAFE's
raw answer and score (and, on a shifted split, the base's). Summaries group the accuracy-scored questions per
family, for audio + audio-visual together ("audio+av") and per type, each with a 95 % bootstrap CI, and give
the paired difference vs clean SAFE and vs the base without audio on the same questions.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from shared.checkpoint import atomic_file  # noqa: E402
from shared.stats import mean_ci, paired_diff_ci  # noqa: E402
from shared.corruptions import NOISE_TYPES, STANDARD, STANDARD_SNRS  # noqa: E402

AUDIO_GROUP = "audio+av"
FAMILY_GROUPS = ("audio", "audio_visual", AUDIO_GROUP, "visual")
RETAINED_AT_0DB = 0.8  # audio+AV accuracy at 0 dB must keep this share of clean accuracy
VL_LOSS_PTS = 1.0  # mismatched audio may cost VL accuracy at most this many points


def _groups(record: Mapping) -> list[str]:
    family = record["family"]
    extra = [AUDIO_GROUP] if family in ("audio", "audio_visual") else []
    return [family, *extra, f"{family}.{record['qtype']}"]


def summarize(records: Sequence[Mapping], base: Mapping[str, float], clean: Mapping[str, float] | None) -> dict:
    """Per family, audio+av and type: SAFE's accuracy, the base's on the same questions, and the paired
    differences vs the base and (when given and covering them) vs clean SAFE."""
    members: dict[str, list[Mapping]] = defaultdict(list)
    for record in records:
        if record["accuracy"]:
            for group in _groups(record):
                members[group].append(record)
    out = {}
    for group, rows in sorted(members.items()):
        scores = [r["score"] for r in rows]
        reference = [base[r["id"]] for r in rows]
        entry = {"acc": mean_ci(scores), "base": mean_ci(reference), "vs_base": paired_diff_ci(scores, reference)}
        if clean is not None and all(r["id"] in clean for r in rows):
            entry["vs_clean"] = paired_diff_ci(scores, [clean[r["id"]] for r in rows])
        out[group] = entry
    return out


def targets(conditions: Mapping[str, dict]) -> list[dict]:
    """The issue's targets, each with its measured value and whether it is met (None: condition not run)."""
    out = []
    missing = conditions.get("missing")
    if missing:
        m = missing["missing"]
        out.append({"target": "missing audio: answer identical to the base on 100 % of questions",
                    "value": f"{m['identical_answers']} / {m['n']} identical", "met": m["identical_answers"] == m["n"]})
    mismatched = conditions.get("mismatched")
    if mismatched and "visual" in mismatched["summary"]:
        loss = 0.0 - 100 * mismatched["summary"]["visual"]["vs_base"]["mean_diff"]  # 0.0 - x: no "-0.00"
        out.append({"target": f"mismatched audio: VL accuracy loss vs the base <= {VL_LOSS_PTS:g} point",
                    "value": f"{loss:+.2f} pts", "met": loss <= VL_LOSS_PTS})
    clean = conditions.get("clean", {}).get("summary", {}).get(AUDIO_GROUP)
    for noise in NOISE_TYPES:
        levels = {snr: conditions.get(f"noise-{noise}-{snr:g}dB", {}).get("summary", {}).get(AUDIO_GROUP)
                  for snr in STANDARD_SNRS}
        zero = levels.get(0.0)
        if clean and zero:
            at_zero, at_clean = zero["acc"]["mean"], clean["acc"]["mean"]
            value = f"{at_zero / at_clean:.1%} of clean" if at_clean else "clean accuracy is 0"
            out.append({"target": f"{noise} noise: audio+AV accuracy at 0 dB >= {RETAINED_AT_0DB:.0%} of clean",
                        "value": value, "met": at_zero >= RETAINED_AT_0DB * at_clean})
        done = {snr: v for snr, v in levels.items() if v}
        if done:
            below = [f"{snr:g} dB" for snr, v in done.items() if v["acc"]["mean"] < v["base"]["mean"]]
            worst = min(v["acc"]["mean"] - v["base"]["mean"] for v in done.values())
            out.append({"target": f"{noise} noise: audio+AV accuracy never below the no-audio floor",
                        "value": f"worst margin {100 * worst:+.2f} pts" + (f" (below at {', '.join(below)})" if below else ""),
                        "met": not below})
    return out


def _pct(stat: Mapping | None) -> str:
    if not stat:
        return "-"
    lo, hi = stat["ci95"]
    return f"{100 * stat['mean']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _diff(stat: Mapping | None) -> str:
    if not stat:
        return "-"
    lo, hi = stat["ci95"]
    return f"{100 * stat['mean_diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows), ""]


def _summary_of(conditions: Mapping[str, dict], name: str, group: str = AUDIO_GROUP) -> dict | None:
    return conditions.get(name, {}).get("summary", {}).get(group)


def _noise_tables(conditions: Mapping[str, dict]) -> list[str]:
    if not any(name.startswith("noise-") for name in conditions):
        return []
    lines = ["## Noise (audio + audio-visual questions only)", "",
             "Accuracy in % with 95 % CI; diff: paired vs clean SAFE on the same questions; floor: the base model "
             "without audio on the same questions.", ""]
    clean = _summary_of(conditions, "clean")
    for noise in NOISE_TYPES:
        families = conditions.get("clean", {}).get("summary", {})
        rows = [["clean", _pct(clean and clean["acc"]), "-", _pct(clean and clean["base"]),
                 _pct(families.get("audio", {}).get("acc")), _pct(families.get("audio_visual", {}).get("acc"))]]
        for snr in STANDARD_SNRS:
            name = f"noise-{noise}-{snr:g}dB"
            s, fam = _summary_of(conditions, name), conditions.get(name, {}).get("summary", {})
            rows.append([f"{snr:g} dB", _pct(s and s["acc"]), _diff(s and s.get("vs_clean")), _pct(s and s["base"]),
                         _pct(fam.get("audio", {}).get("acc")), _pct(fam.get("audio_visual", {}).get("acc"))])
        lines += [f"### {noise}" + (" (out of domain: the world only mixes white noise)" if noise == "pink" else ""), ""]
        lines += _table(["SNR", "audio+AV", "diff vs clean (pts)", "no-audio floor", "audio", "audio-visual"], rows)
    return lines


def _mask_table(conditions: Mapping[str, dict]) -> list[str]:
    if not any(name.startswith("mask-") for name in conditions):
        return []
    rows = []
    for c in (c for c in STANDARD if c.kind == "mask"):
        s = _summary_of(conditions, c.name)
        rows.append([c.layout, f"{100 * c.fraction:g} %", _pct(s and s["acc"]), _diff(s and s.get("vs_clean")),
                     _pct(s and s["base"])])
    return ["## Time masks (audio + audio-visual questions only)", "",
            "Contiguous: one span at a random position; scattered: 50 ms chunks.", "",
            *_table(["layout", "masked", "audio+AV", "diff vs clean (pts)", "no-audio floor"], rows)]


def _missing_lines(missing: Mapping | None) -> list[str]:
    if not missing:
        return []
    m = missing["missing"]
    return ["## Missing audio", "",
            "Every question answered with no valid audio frames, in mixed batches beside questions with audio at "
            "gate 1 (alternate rows, two passes), against the bare base on the same batch.", "",
            *_table(["questions", "identical answers", "identical scores", "rows with audio answered unlike the base"],
                    [[str(m["n"]), f"{m['identical_answers']} ({100 * m['identical_answers'] / m['n']:.2f} %)",
                      f"{m['identical_scores']}", str(m["present_differ"])]]),
            "Identical answers give identical scores, so with audio missing SAFE is never below the base "
            "(the TMLR'22 rule: never below the single-modality model).", ""]


def _mismatch_lines(conditions: Mapping[str, dict]) -> list[str]:
    mismatched = conditions.get("mismatched")
    if not mismatched:
        return []
    rows = []
    for group in FAMILY_GROUPS:
        s, c = mismatched["summary"].get(group), _summary_of(conditions, "clean", group)
        if s:
            rows.append([group, _pct(s["acc"]), _pct(c and c["acc"]), _pct(s["base"]), _diff(s["vs_base"]),
                         _diff(s.get("vs_clean"))])
    lines = ["## Mismatched audio", "", "Every clip replaced by a clip of another scene (a seeded derangement).", "",
             *_table(["family", "mismatched", "clean", "base (no audio)", "diff vs base", "diff vs clean"], rows)]
    probe = mismatched.get("probe")
    if probe:
        lines += [f"AVHBench-style probe, on all {probe['questions']} audio-visual questions of the split: those "
                  "whose swapped clip (a single sound event) implies another answer with this image's objects; how "
                  "often the answer follows the wrong audio, and how often the truth.", "",
                  *_table(["type", "questions", "SAFE follows wrong audio", "SAFE follows truth",
                           "base follows wrong audio", "base follows truth"],
                          [[t, str(p["n"]), f"{100 * p['follows_wrong_audio']:.1f} %",
                            f"{100 * p['follows_truth']:.1f} %",
                            f"{100 * probe['base'][t]['follows_wrong_audio']:.1f} %",
                            f"{100 * probe['base'][t]['follows_truth']:.1f} %"] for t, p in probe["safe"].items()])]
    return lines


def _shift_lines(conditions: Mapping[str, dict], skipped: str | None) -> list[str]:
    shifts = {name: c for name, c in conditions.items() if name.startswith("shift-")}
    if not shifts:
        return ["## Domain shift", "", f"Not run: {skipped}.", ""] if skipped else []
    rows = []
    for name, c in shifts.items():
        for group in FAMILY_GROUPS:
            s = c["summary"].get(group)
            if s:
                rows.append([name.removeprefix("shift-"), group, _pct(s["acc"]), _pct(s["base"]), _diff(s["vs_base"]),
                             _pct(_summary_of(conditions, "clean", group) and
                                  _summary_of(conditions, "clean", group)["acc"])])
    return ["## Domain shift (world variants; SAFE and the base both measured on the variant's split)", "",
            *_table(["shift", "family", "SAFE", "base (no audio)", "SAFE - base", "SAFE, unshifted"], rows)]


def _type_table(conditions: Mapping[str, dict]) -> list[str]:
    names = [n for n in ("clean", "noise-white-0dB", "noise-babble-0dB", "noise-pink-0dB", "mask-contiguous-50",
                         "mask-scattered-50", "mismatched") if n in conditions]
    types = sorted({g for n in names for g in conditions[n]["summary"] if "." in g})
    rows = [[t, _pct(_summary_of(conditions, "clean", t) and _summary_of(conditions, "clean", t)["base"]),
             *(_pct(_summary_of(conditions, n, t) and _summary_of(conditions, n, t)["acc"]) for n in names)]
            for t in types]
    return ["## Per question type", "", *_table(["type", "base (no audio)", *names], rows)]


def markdown(settings: Mapping, conditions: Mapping[str, dict], checks: Sequence[Mapping],
             shift_skipped: str | None) -> str:
    """robustness.md: settings, the targets, then one section per condition family."""
    lines = ["# Robustness of SAFE", "", *(f"- {k}: {v}" for k, v in settings.items()), "", "## Targets", "",
             *_table(["target", "measured", "met"],
                     [[c["target"], c["value"], "yes" if c["met"] else "**NO**"] for c in checks]),
             *_noise_tables(conditions), *_mask_table(conditions), *_missing_lines(conditions.get("missing")),
             *_mismatch_lines(conditions), *_shift_lines(conditions, shift_skipped), *_type_table(conditions)]
    return "\n".join(lines)


def plot_snr(conditions: Mapping[str, dict], path: Path) -> None:
    """Audio+AV accuracy vs SNR per noise type with CI bands, the clean accuracy and the no-audio floor."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    floors = []
    for noise, color in zip(NOISE_TYPES, ("tab:blue", "tab:orange", "tab:purple")):
        points = [(snr, s) for snr in STANDARD_SNRS if (s := _summary_of(conditions, f"noise-{noise}-{snr:g}dB"))]
        if not points:
            continue
        points.sort()
        x = [p[0] for p in points]
        ax.plot(x, [100 * p[1]["acc"]["mean"] for p in points], "o-", color=color, label=f"{noise} noise")
        ax.fill_between(x, [100 * p[1]["acc"]["ci95"][0] for p in points],
                        [100 * p[1]["acc"]["ci95"][1] for p in points], color=color, alpha=0.2)
        floors += [p[1]["base"] for p in points]
    clean = _summary_of(conditions, "clean")
    if clean:
        ax.axhline(100 * clean["acc"]["mean"], color="tab:green", ls="--", label="clean audio")
        ax.axhspan(*(100 * v for v in clean["acc"]["ci95"]), color="tab:green", alpha=0.1)
    floor = clean["base"] if clean else (floors[0] if floors else None)
    if floor:
        ax.axhline(100 * floor["mean"], color="black", ls=":", label="no-audio floor (base)")
        ax.axhspan(*(100 * v for v in floor["ci95"]), color="gray", alpha=0.15)
    ax.set_xlabel("SNR (dB, whole clip)")
    ax.set_ylabel("audio + audio-visual accuracy (%)")
    ax.set_title("SAFE under additive noise (95 % CI bands)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=120)
    plt.close(fig)
