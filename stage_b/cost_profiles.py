"""Cost profiles (`--cost-profile NAME`): an outcome table's compute recounted for real models, scores unchanged.

In the embedded world the CLAP encoder costs five times the whole base model, so the number of audio tokens barely
changes compute; on LLaVA-1.5 the base prefill over 576 image tokens dwarfs a CLAP encoder, and Whisper-large-v3 or
prefix fusion change the balance again. A profile is data (configs/cost_profiles/<file>.yaml): the base and encoder,
named by hub id with their configs in configs/hub/<hub id>/config.json, and the shape of SAFE's default bridge on that
LM (projector Linears, fusion rank and layers, LoRA rank and projections, k_max). Each analytic file gives two
profiles: `<file>` (cross-attention fusion) and `<file>-prefix` (prefix fusion). `embedded` keeps the table's own
`gflops`, as stage_b-outcomes counted them on the table's checkpoint (on a table joining several bridges, stage_b.join,
each action's own: every input table counted its actions on its own checkpoint and encoder).

A table joining several bridges names each action's encoder (`OutcomeTable.action_encoders`), and an analytic
profile charges one encoder on every action, so it refuses such a table. A *per-encoder* profile (kind
`per_encoder`, e.g. llava-1.5-7b+clap-or-whisper) maps each encoder name to an analytic profile and charges every
audio action by the profile of its own encoder (clap-k4 as llava-1.5-7b+clap-htsat, whisper-k4 as
llava-1.5-7b+whisper-large-v3); its members must share the base, image tokens and LoRA, so no audio costs the same
through either bridge (it is charged by the first member). Its `-prefix` name uses each member's `-prefix` profile.
It refuses a table without action names, whose encoder it cannot know.

Per table row and action a profile charges, with stage_a.flops (no weights are loaded; configs only):
- the base prefill of the real model over S = image_tokens + the row's `text_tokens` (generate's prefill: the last
  logit only, like the table), vision tower and connector included;
- the LoRA branches over S (evaluated on every call, also without audio, as stage_a.flops charges them);
- for audio actions, the bridge for k tokens on the real LM and the real encoder on one full window (the projector
  pools `encoder_frames`, the frames of a full window, since every clip is padded to it).
The text-token count is the table's: the prompt as the table's own base model tokenized it (the embedded world's
word-level vocabulary), not LLaVA-1.5's chat template and Llama tokenizer; every question carries one image, as
stage_a.flops.base_prefill_flops counts it.

`latency_ms` is never recounted: it stays the embedded machine's measurement, so under a real profile only the
compute (alpha) reward component is meaningful, and stage_b-pareto refuses gamma and both.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import numpy as np
import yaml
from transformers import PretrainedConfig, WhisperConfig, WhisperFeatureExtractor

import configs
from envs.outcome_table import OutcomeTable
from stage_a.bridge_size import hub_config
from stage_a.flops import BridgeShape, encoder_flops, flops_parts

log = logging.getLogger(__name__)

PROFILE_DIR = Path(configs.__file__).parent / "cost_profiles"
EMBEDDED = "embedded"
PREFIX_SUFFIX = "-prefix"
KINDS = ("table", "analytic", "per_encoder")
PARTS = ("base", "lora", "bridge", "encoder")
ANALYTIC_KEYS = ("kind", "base", "encoder", "image_tokens", "encoder_frames", "k_max", "ks", "bridge", "sources")
PER_ENCODER_KEYS = ("kind", "encoders", "sources")
BRIDGE_KEYS = ("audio_dim", "projector", "fusion_rank", "fusion_layers", "lora_rank", "lora_layers",
               "lora_projections")
LATENCY_NOTE = "latency_ms is the embedded machine's measurement, not recounted by the profile"


@dataclasses.dataclass(frozen=True)
class CostProfile:
    """One named profile: `kind` "table" (the table's own gflops), "analytic" (recounted for base + encoder) or
    "per_encoder" (each action recounted by the analytic profile of its encoder; `members`: (encoder, profile)
    pairs)."""

    name: str
    kind: str
    file: Path
    sources: dict = dataclasses.field(compare=False)
    base: str = ""
    encoder: str = ""
    fusion_mode: str = "cross_attention"
    image_tokens: int = 0
    encoder_frames: int = 0
    k_max: int = 0
    ks: tuple[int, ...] = ()
    fusion_layers: tuple[int, ...] = ()
    shape: BridgeShape | None = None
    members: tuple[tuple[str, CostProfile], ...] = ()

    def describe(self) -> dict:
        """The profile as recorded in a table's provenance and in reports."""
        if self.kind == "table":
            return {"name": self.name, "kind": self.kind, "file": self.file.name}
        if self.kind == "per_encoder":
            return {"name": self.name, "kind": self.kind, "file": self.file.name,
                    "encoders": {encoder: member.describe() for encoder, member in self.members},
                    "no_audio": self.members[0][1].name, "latency": LATENCY_NOTE}
        return {"name": self.name, "kind": self.kind, "file": self.file.name, "base": self.base,
                "encoder": self.encoder, "fusion_mode": self.fusion_mode, "image_tokens": self.image_tokens,
                "encoder_frames": self.encoder_frames, "encoder_gflops": encoder_gflops(self), "k_max": self.k_max,
                "latency": LATENCY_NOTE}


def profile_names() -> list[str]:
    """Every known profile name: `embedded`, and each analytic file in both fusion modes."""
    names = []
    for path in sorted(PROFILE_DIR.glob("*.yaml")):
        kind = _read(path).get("kind")
        names += [path.stem] if kind == "table" else [path.stem, path.stem + PREFIX_SUFFIX]
    return names


def check_profile_name(name: str) -> str:
    """`name` if it is a known profile, else a ValueError listing the known ones."""
    known = profile_names()
    if name not in known:
        raise ValueError(f"--cost-profile is {name!r}; expected one of {known}")
    return name


def _read(path: Path) -> dict:
    """A profile file's mapping, or a ValueError naming the file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"cost profile {path}: not valid YAML ({err})") from err
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in KINDS:
        raise ValueError(f"cost profile {path}: expected a mapping with kind one of {list(KINDS)}, "
                         f"got {type(data).__name__} with kind {kind!r}")
    return data


def _positive_int(path: Path, key: str, value: object) -> int:
    """`value` if it is an integer >= 1, else a ValueError naming the file and key."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"cost profile {path}: {key} is {value!r}; expected an integer >= 1")
    return value


def _pair(path: Path, key: str, value: object) -> tuple[int, int]:
    """An [in, out] pair of Linear sizes, or a ValueError naming the file and key."""
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"cost profile {path}: {key} is {value!r}; expected [in, out]")
    return _positive_int(path, f"{key}[0]", value[0]), _positive_int(path, f"{key}[1]", value[1])


def _keys(path: Path, where: str, data: object, expected: tuple[str, ...]) -> None:
    """A ValueError naming the file unless `data` is a mapping with exactly the `expected` keys."""
    if not isinstance(data, dict):
        raise ValueError(f"cost profile {path}: {where} is {data!r}; expected a mapping with keys {list(expected)}")
    missing, unknown = sorted(set(expected) - data.keys()), sorted(data.keys() - set(expected))
    if missing or unknown:
        raise ValueError(f"cost profile {path}: {where} has missing keys {missing} and unknown keys {unknown}; "
                         f"expected exactly {list(expected)}")


@functools.cache
def load_profile(name: str) -> CostProfile:
    """The profile `name` (see `profile_names`), read from configs/cost_profiles and checked field by field."""
    check_profile_name(name)
    prefix = name.endswith(PREFIX_SUFFIX) and not (PROFILE_DIR / f"{name}.yaml").is_file()
    mode = "prefix" if prefix else "cross_attention"
    path = PROFILE_DIR / f"{name.removesuffix(PREFIX_SUFFIX) if prefix else name}.yaml"
    data = _read(path)
    if data["kind"] == "table":
        return CostProfile(name, "table", path, dict(data.get("sources", {})))
    if data["kind"] == "per_encoder":
        return _per_encoder(name, path, data, PREFIX_SUFFIX if prefix else "")
    _keys(path, "the file", data, ANALYTIC_KEYS)
    bridge = data["bridge"]
    _keys(path, "bridge", bridge, BRIDGE_KEYS)
    rank = _positive_int(path, "bridge.lora_rank", bridge["lora_rank"])
    for key in ("projector", "lora_projections", "fusion_layers"):
        kind = dict if key == "lora_projections" else list
        if not isinstance(bridge[key], kind) or not bridge[key]:
            raise ValueError(f"cost profile {path}: bridge.{key} is {bridge[key]!r}; "
                             f"expected a non-empty {kind.__name__}")
    per_layer = [_pair(path, f"bridge.lora_projections.{n}", v) for n, v in bridge["lora_projections"].items()]
    lora = tuple(shape for d_in, d_out in per_layer for shape in ((d_in, rank), (rank, d_out)))
    layers = _positive_int(path, "bridge.lora_layers", bridge["lora_layers"])
    fusion_layers = bridge["fusion_layers"]
    if any(not isinstance(i, int) or not 0 <= i < layers for i in fusion_layers):
        raise ValueError(f"cost profile {path}: bridge.fusion_layers is {fusion_layers!r}; expected decoder-layer "
                         f"indices in [0, {layers})")
    shape = BridgeShape(audio_dim=_positive_int(path, "bridge.audio_dim", bridge["audio_dim"]),
                        projector=tuple(_pair(path, "bridge.projector[]", p) for p in bridge["projector"]),
                        fusion_mode=mode, fusion_rank=_positive_int(path, "bridge.fusion_rank", bridge["fusion_rank"]),
                        fusion_blocks=0 if mode == "prefix" else len(fusion_layers), lora=lora * layers)
    k_max = _positive_int(path, "k_max", data["k_max"])
    if not isinstance(data["ks"], list) or not data["ks"]:
        raise ValueError(f"cost profile {path}: ks is {data['ks']!r}; expected a non-empty list of token counts")
    ks = tuple(_positive_int(path, "ks[]", k) for k in data["ks"])
    if max(ks) > k_max:
        raise ValueError(f"cost profile {path}: ks {list(ks)} exceed k_max {k_max}")
    return CostProfile(name, "analytic", path, dict(data["sources"]), base=str(data["base"]),
                       encoder=str(data["encoder"]), fusion_mode=mode,
                       image_tokens=_positive_int(path, "image_tokens", data["image_tokens"]),
                       encoder_frames=_positive_int(path, "encoder_frames", data["encoder_frames"]),
                       k_max=k_max, ks=ks, fusion_layers=tuple(fusion_layers), shape=shape)


def _per_encoder(name: str, path: Path, data: dict, suffix: str) -> CostProfile:
    """A per-encoder profile: each encoder's analytic member (its `-prefix` profile when `suffix` is "-prefix"),
    checked to share the base, image tokens and LoRA (no audio then costs the same through every bridge)."""
    _keys(path, "the file", data, PER_ENCODER_KEYS)
    encoders = data["encoders"]
    if not isinstance(encoders, dict) or len(encoders) < 2:
        raise ValueError(f"cost profile {path}: encoders is {encoders!r}; expected a mapping of two or more encoder "
                         "names (as in action names, e.g. clap) to analytic profile names")
    members = []
    for encoder, member in encoders.items():
        if str(member) not in profile_names() or load_profile(f"{member}{suffix}").kind != "analytic":
            raise ValueError(f"cost profile {path}: encoders.{encoder} is {member!r}; expected an analytic profile, "
                             f"one of {[n for n in profile_names() if not n.endswith(PREFIX_SUFFIX)]}")
        members.append((str(encoder), load_profile(f"{member}{suffix}")))
    first = members[0][1]
    for encoder, member in members[1:]:
        if (member.base, member.image_tokens, member.shape.lora) != (first.base, first.image_tokens, first.shape.lora):
            raise ValueError(f"cost profile {path}: encoders.{encoder} ({member.name}, base {member.base}) and "
                             f"encoders.{members[0][0]} ({first.name}, base {first.base}) differ in base, image tokens "
                             "or LoRA; expected bridges on one frozen base, so that no audio costs the same in both")
    return CostProfile(name, "per_encoder", path, dict(data["sources"]), base=first.base,
                       fusion_mode=first.fusion_mode, members=tuple(members))


@functools.cache
def base_config(profile: CostProfile) -> PretrainedConfig:
    """The base VL model's config (configs/hub/<base>/config.json)."""
    return hub_config(profile.base)


@functools.cache
def encoder_gflops(profile: CostProfile) -> float:
    """The frozen encoder on one full window, with Whisper's torch mel front end as shared.encoders runs it."""
    config = hub_config(profile.encoder)
    extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins) if isinstance(config, WhisperConfig) else None
    return encoder_flops(config, extractor) / 1e9


def action_parts(profile: CostProfile, k: int, text_tokens: int) -> dict[str, float]:
    """GFLOPs by part (base, lora, bridge, encoder) of one question of `text_tokens` text tokens, k audio tokens."""
    return dict(zip(PARTS, _action_parts(profile, k, text_tokens)))


@functools.cache
def _action_parts(profile: CostProfile, k: int, text_tokens: int) -> tuple[float, ...]:
    """`action_parts` as a tuple in PARTS order, memoised (few distinct prompt lengths per table)."""
    if profile.kind != "analytic":
        raise ValueError(f"cost profile {profile.name!r} keeps the table's gflops; it has no parts to count")
    if not 0 <= k <= profile.k_max:
        raise ValueError(f"k = {k} under cost profile {profile.name!r}; expected 0 to its k_max {profile.k_max}")
    parts = flops_parts(base_config(profile), profile.shape, encoder_gflops(profile) * 1e9, k,
                        profile.image_tokens + text_tokens, profile.encoder_frames, all_logits=False)
    return tuple(parts[name] / 1e9 for name in PARTS)


def require_text_tokens(table: OutcomeTable, profile: str) -> np.ndarray:
    """The table's `text_tokens` column, or a one-line ValueError naming it and the command that rebuilds the table."""
    if table.text_tokens is None:
        source = table.provenance
        raise ValueError(f"this outcome table has no 'text_tokens' column, which cost profile {profile!r} needs to "
                         "count each prompt on the real base; rebuild the table with `stage_b-outcomes --checkpoint "
                         f"{source.get('checkpoint', 'DIR')} --split {source.get('split', 'SPLIT')} --overwrite`")
    return table.text_tokens


def action_profiles(table: OutcomeTable, name: str) -> list[CostProfile]:
    """The analytic profile that charges each action of `table` under profile `name`: the profile itself on every
    action, or for a per-encoder profile the member of each action's encoder (no audio: the first member)."""
    profile = load_profile(name)
    encoders = table.action_encoders
    used = sorted(set(encoders or ()) - {""})
    if profile.kind == "analytic":
        if len(used) > 1:
            per_encoder = [n for n in profile_names() if load_profile(n).kind == "per_encoder"]
            raise ValueError(f"the table's actions {table.action_labels} go through the encoders {used}, but cost "
                             f"profile {name!r} charges one encoder ({profile.encoder}) on every action; expected a "
                             f"per-encoder profile, one of {per_encoder}")
        return [profile] * table.n_actions
    if profile.kind != "per_encoder":
        raise ValueError(f"cost profile {name!r} keeps the table's gflops; it has no parts to count")
    if encoders is None:
        raise ValueError(f"cost profile {name!r} charges each action by its own encoder, but the table's actions "
                         f"{table.action_labels} do not name an encoder (one bridge, as stage_b-outcomes writes it); "
                         "expected a table joined by stage_b-join, or a profile of one encoder")
    members = dict(profile.members)
    unknown = [encoder for encoder in used if encoder not in members]
    if unknown:
        raise ValueError(f"the table's actions {table.action_labels} use the encoders {unknown}, which cost profile "
                         f"{name!r} does not charge; it knows {list(members)}")
    return [members[encoder] if encoder else profile.members[0][1] for encoder in encoders]


def table_parts(table: OutcomeTable, name: str) -> dict[str, np.ndarray]:
    """Per part (base, lora, bridge, encoder): (N, A) GFLOPs of each row and action under profile `name` (analytic,
    or per-encoder: each action by its own encoder's profile, `action_profiles`)."""
    profiles = action_profiles(table, name)
    tokens = require_text_tokens(table, name)
    over = [f"{label} (k_max {profile.k_max})" for label, profile, k in zip(table.action_labels, profiles,
                                                                           table.actions.tolist()) if k > profile.k_max]
    if over:
        raise ValueError(f"the table's actions {table.action_labels} include {over}: more tokens than cost profile "
                         f"{name!r} allows")
    distinct, inverse = np.unique(tokens, return_inverse=True)
    out = {}
    for part in PARTS:
        per_value = np.array([[action_parts(profile, int(k), int(t))[part]
                               for profile, k in zip(profiles, table.actions)] for t in distinct])
        out[part] = per_value[inverse]
    return out


def apply_cost_profile(table: OutcomeTable, name: str) -> OutcomeTable:
    """A new validated table whose `gflops` are profile `name`'s; scores, latency and features unchanged.

    The profile is recorded in the provenance (`cost_profile`). A table already recounted by another analytic
    profile is refused: profiles apply to the table stage_b-outcomes wrote."""
    profile = load_profile(name)
    previous = table.provenance.get("cost_profile", {}).get("name")
    if previous == name:
        return table
    if previous not in (None, EMBEDDED):
        raise ValueError(f"this outcome table already carries cost profile {previous!r}; apply {name!r} to the table "
                         "stage_b-outcomes wrote")
    provenance = {**table.provenance, "cost_profile": profile.describe()}
    if profile.kind == "table":
        return dataclasses.replace(table, provenance=provenance)
    gflops = sum(table_parts(table, name).values())
    log.info("cost profile %s: mean GFLOPs per action %s (embedded %s)", name, gflops.mean(0).round(2).tolist(),
             table.gflops.mean(0).round(4).tolist())
    return dataclasses.replace(table, gflops=gflops.astype(np.float32), provenance=provenance)


def profiled_tables(table: Path, split: str | None, out: Path, name: str) -> Path:
    """`table` recounted under profile `name` into `out`/tables/, and `outcomes_<split>.npz` beside it when stage_b-eval
    would read that one (`split` given and not the table's own); the recounted table's path. Under `embedded`:
    `table` itself, nothing written.

    The recount is deterministic and .npz members carry no timestamp, so rewriting it from an unchanged table gives
    the same bytes: a stage_b-pareto rerun sees the SHA-256 its policies recorded and reuses them."""
    if name == EMBEDDED:
        return table
    source = OutcomeTable.load(table)
    tables = {table.name: source}
    if split is not None and split != source.provenance.get("split"):
        other = table.parent / f"outcomes_{split}.npz"
        if not other.is_file():
            raise ValueError(f"no outcome table {other} to recount under --cost-profile {name}; build it with "
                             f"`stage_b-outcomes --checkpoint {source.provenance.get('checkpoint', 'DIR')} "
                             f"--split {split}`")
        tables[other.name] = OutcomeTable.load(other)
    for file, data in tables.items():
        apply_cost_profile(data, name).save(out / "tables" / file)
    return out / "tables" / table.name
