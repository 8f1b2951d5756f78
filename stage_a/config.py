"""Stage A training configuration: plain dataclasses, loaded from YAML presets with overrides.

Baselines are configs of the same trainer (see configs/baseline_*.yaml): original VL
(`use_audio: false`, no steps), LoRA-only (prefix tokens + LoRA, gate fixed at 1, no retention),
full fine-tuning (`model.train_base_lm: true`) and random audio (`shuffle_audio: true`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from shared.cli import check_number
from shared.corruptions import NOISE_TYPES
from stage_a.fusion import FusionConfig
from stage_a.lora import LoraSettings
from stage_a.projector import ProjectorConfig
from stage_a.retention import RetentionConfig, retention_variant
from stage_a.sampler import MixConfig

GATE_SCHEDULES = ("none", "linear", "cosine", "step")
DTYPES = ("float32", "bfloat16", "float16")  # the base model's dtypes (the bridge keeps float32 master weights)


@dataclass
class ModelSettings:
    """Base VL model, frozen audio encoder and bridge sizes. Empty paths mean the embedded world's models."""

    base_vl: str = ""
    audio_encoder: str = "clap"
    clap: str = ""
    whisper: str = ""
    dtype: str = "float32"
    k_max: int = 16
    projector_depth: int = 2
    fusion: FusionConfig = field(default_factory=FusionConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train_base_lm: bool = False

    def __post_init__(self) -> None:
        if self.audio_encoder not in ("clap", "whisper", "both"):
            raise ValueError(f"model.audio_encoder is {self.audio_encoder!r}; expected 'clap', 'whisper' or 'both'")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype is {self.dtype!r}; expected float32, bfloat16 or float16")
        if self.train_base_lm and self.dtype != "float32":
            raise ValueError(f"model.train_base_lm is true with model.dtype {self.dtype}; expected float32: the base "
                             "LM's own weights would train without float32 master weights (only the bridge has them)")
        ProjectorConfig(1, 1, k_max=self.k_max, depth=self.projector_depth)  # its checks now, not at model build


@dataclass
class DataSettings:
    """Manifests (empty: the embedded world's splits), feature cache and how VL labels are used."""

    train: str = ""
    val: str = ""
    test: str = ""
    feature_cache: str = ""
    sample_rate: int = 16000
    vl_labels: str = "use"
    eval_size: int = 600
    test_size: int = 0

    def __post_init__(self) -> None:
        if self.vl_labels not in ("use", "ignore"):
            raise ValueError(f"data.vl_labels is {self.vl_labels!r}; expected 'use' or 'ignore'")
        check_number("data.sample_rate", self.sample_rate, ge=1, integer=True)
        for name in ("eval_size", "test_size"):  # 0: every question
            check_number(f"data.{name}", getattr(self, name), ge=0, integer=True)


@dataclass
class AugmentConfig:
    """Training-side audio augmentation: `copies` corrupted feature sets per train clip (0: off), each drawn once
    (noise type, SNR in dB, optional time mask) and cached; a training audio row uses one with `probability`."""

    copies: int = 0
    probability: float = 0.5
    noise: tuple[str, ...] = ("white", "pink", "babble")
    snr_db: tuple[float, float] = (-5.0, 20.0)
    mask_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_number("augment.copies", self.copies, ge=0, integer=True)
        check_number("augment.probability", self.probability, ge=0, le=1)
        check_number("augment.mask_fraction", self.mask_fraction, ge=0, le=1)
        check_number("augment.seed", self.seed, ge=0, integer=True)
        self.noise, self.snr_db = tuple(self.noise), tuple(self.snr_db)
        if not self.noise or any(n not in NOISE_TYPES for n in self.noise):
            raise ValueError(f"augment.noise is {list(self.noise)}; expected a non-empty list of {NOISE_TYPES}")
        if len(self.snr_db) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in self.snr_db) \
                or math.ceil(self.snr_db[0]) > math.floor(self.snr_db[1]):
            raise ValueError(f"augment.snr_db is {list(self.snr_db)}; expected [low, high] finite dB with low <= high, "
                             "spanning at least one integer dB (SNRs are drawn as integers)")


@dataclass
class TrainConfig:
    """Everything one `stage_a-train` run needs; `world` names the embedded world's preset (used for empty paths)."""

    name: str = "stage_a"
    out_dir: str = "runs"
    seed: int = 0
    world: str = "world"
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    mix: MixConfig = field(default_factory=MixConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    retention: str = "full"
    kl_weight: float | None = None
    kl_temperature: float | None = None
    fisher_weight: float | None = None
    nullspace_energy: float | None = None
    steps: int = 1500
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    k_choices: tuple[int, ...] = (4, 8, 16)
    k_eval: int = 8
    gate_schedule: str = "linear"
    gate_warmup_steps: int = 200
    use_audio: bool = True
    shuffle_audio: bool = False
    eval_every: int = 250
    eval_batch_size: int = 128
    tolerance_pts: float = 1.0
    stop_patience: int = 1
    log_every: int = 25
    vanish_patience: int = 50
    threads: int = 0
    tensorboard: bool = True
    wandb: bool = False

    def __post_init__(self) -> None:
        if self.gate_schedule not in GATE_SCHEDULES:
            raise ValueError(f"gate_schedule is {self.gate_schedule!r}; expected one of {GATE_SCHEDULES}")
        if not self.k_choices or any(not 1 <= k <= self.model.k_max for k in (*self.k_choices, self.k_eval)):
            raise ValueError(f"k_choices {self.k_choices} / k_eval {self.k_eval}; expected values in 1..{self.model.k_max}")
        for name, bounds in {"lr": {"gt": 0}, "weight_decay": {"ge": 0}, "grad_clip": {"ge": 0},  # grad_clip 0: off
                             "label_smoothing": {"ge": 0, "le": 1}, "tolerance_pts": {}}.items():
            check_number(name, getattr(self, name), **bounds)
        for name in ("seed", "steps", "warmup_steps", "gate_warmup_steps", "threads"):  # threads 0: torch's default
            check_number(name, getattr(self, name), ge=0, integer=True)
        for name in ("eval_every", "eval_batch_size", "log_every", "stop_patience", "vanish_patience"):
            check_number(name, getattr(self, name), ge=1, integer=True)
        retention_settings(self)  # the variant and its weight overrides, checked before any model loads


def retention_settings(cfg: TrainConfig) -> RetentionConfig:
    """The named retention variant with any explicit weight overrides applied."""
    overrides = {k: v for k, v in (("kl_weight", cfg.kl_weight), ("kl_temperature", cfg.kl_temperature),
                                   ("fisher_weight", cfg.fisher_weight), ("nullspace_energy", cfg.nullspace_energy))
                 if v is not None}
    return dataclasses.replace(retention_variant(cfg.retention), **overrides)


def gate_value(schedule: str, step: int, warmup: int) -> float:
    """The fusion gate at `step`: 1 throughout ('none'), or rising from 0 to 1 over `warmup` steps."""
    if schedule == "none" or warmup <= 0 or step >= warmup:
        return 1.0
    t = step / warmup
    if schedule == "linear":
        return t
    if schedule == "cosine":
        return 0.5 * (1.0 - math.cos(math.pi * t))
    return 0.0 if t < 0.5 else 1.0  # "step": closed for the first half of the warmup, then open


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
