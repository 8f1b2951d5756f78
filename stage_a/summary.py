"""The human-readable table printed at the end of `stage_a-train` (summary.json holds the same figures)."""

from __future__ import annotations

from shared.dataset_metrics import format_dataset_summary


def _pct(x: float) -> str:
    return f"{100 * x:6.2f}"


def format_summary(s: dict) -> str:
    """A table of audio gain, VL retention and exactness, then per-type accuracy and each dataset's own metric."""
    audio = s["audio_acc"]
    lo, hi = audio["ci95"]
    delta_lo, delta_hi = s["vl_delta_ci95_pts"]
    lines = [
        f"Stage A summary ({s['split']} split, k={s['k_eval']}, retention '{s['retention_variant']}', "
        f"vl_labels {s['vl_labels']}, {s['steps']} steps in {s['train_seconds']:.0f} s)",
        "",
        f"{'metric':<34} {'value':>8}",
        f"{'audio + AV accuracy (SAFE)':<34} {_pct(audio['mean'])}   95% CI [{100 * lo:.2f}, {100 * hi:.2f}]",
        f"{'audio + AV accuracy (base floor)':<34} {_pct(s['audio_acc_base'])}",
        f"{'audio gain (points)':<34} {100 * (audio['mean'] - s['audio_acc_base']):+8.2f}",
        f"{'VL accuracy (base)':<34} {_pct(s['vl_acc_base'])}",
        f"{'VL accuracy (SAFE, audio attached)':<34} {_pct(s['vl_acc_with_audio'])}",
        f"{'VL accuracy (SAFE, gate 0)':<34} {_pct(s['vl_acc_gate0'])}",
        f"{'VL degradation (points)':<34} {s['vl_degradation_pts']:+8.2f}   delta 95% CI [{delta_lo:.2f}, {delta_hi:.2f}]",
        f"{'gate-0 max |logit diff|':<34} {s['gate0_max_abs_logit_diff']:8.3g}   "
        f"on {s['gate0_mixed_rows']} VL rows in mixed batches (beside gate-1 twins), "
        f"{s['gate0_answers_differ']} answered unlike the base",
        f"{'best step / within tolerance':<34} {s['best_step']!s:>8}   {s['within_tolerance']}",
    ]
    if "per_qtype" in s:
        lines += ["", f"{'question type':<28} {'SAFE':>7} {'base':>7}"]
        for name, value in s["per_qtype"].items():
            base = s["per_qtype_base"].get(name, {"mean": float("nan")})
            lines.append(f"{name:<28} {_pct(value['mean'])} {_pct(base['mean'])}")
    if "per_dataset" in s:
        lines += ["", "Per dataset, each with its own metric (accuracies in %):",
                  format_dataset_summary(s["per_dataset"])]
    return "\n".join(lines)
