"""The explicit data-mixing sampler of Stage A training.

Each batch slot is audio-dependent with probability p(step) and VL otherwise, drawn from a
generator seeded by (seed, step); p ramps from `curriculum_start` to the target fraction over
`curriculum_steps` (0 = no curriculum). Each pool (audio, VL) is walked through seeded
permutations, one per pass, so every sample is seen once per pass. With `balance: qtype` the audio
pool is split by question type and each audio slot first draws a type uniformly (from the same
seeded generator), so a rare type (e.g. the order of two sounds, 7 % of the world's audio rows) is
trained as often as a common one. The whole state is a few integers, so a resumed run draws
exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from shared.cli import check_number

POOLS = ("audio", "vl")
BALANCES = ("none", "qtype")


@dataclass
class MixConfig:
    """Target audio-dependent fraction, optional curriculum, batch size and seed."""

    audio_fraction: float = 0.35
    curriculum_steps: int = 0
    curriculum_start: float = 0.30
    batch_size: int = 32
    seed: int = 0
    balance: str = "none"

    def __post_init__(self) -> None:
        if self.balance not in BALANCES:
            raise ValueError(f"mixing balance is {self.balance!r}; expected one of {BALANCES}")
        for name in ("audio_fraction", "curriculum_start"):
            check_number(f"mixing {name}", getattr(self, name), ge=0, le=1)
        check_number("mixing batch_size", self.batch_size, ge=1, integer=True)
        for name in ("curriculum_steps", "seed"):
            check_number(f"mixing {name}", getattr(self, name), ge=0, integer=True)


class MixSampler:
    """Global batches of sample indices with a controlled audio/VL mix (and, optionally, audio types balanced)."""

    def __init__(self, audio: list[int], vl: list[int], config: MixConfig,
                 audio_types: list[str] | None = None) -> None:
        self.config = config
        if config.audio_fraction > 0 and not audio:
            raise ValueError(f"audio_fraction is {config.audio_fraction} but the data has no audio-dependent samples")
        if config.audio_fraction < 1 and not vl:
            raise ValueError(f"audio_fraction is {config.audio_fraction} but the data has no VL samples; "
                             "expected VL questions or audio_fraction 1.0")
        self.pools = {"vl": torch.tensor(vl, dtype=torch.long)}
        if config.balance == "qtype":
            if audio_types is None or len(audio_types) != len(audio):
                raise ValueError(f"balance 'qtype' needs one question type per audio sample; got "
                                 f"{None if audio_types is None else len(audio_types)} for {len(audio)}")
            self.audio_pools = [f"audio:{t}" for t in sorted(set(audio_types))]
            for name in self.audio_pools:
                self.pools[name] = torch.tensor([i for i, t in zip(audio, audio_types) if f"audio:{t}" == name],
                                                dtype=torch.long)
        else:
            self.audio_pools = ["audio"]
            self.pools["audio"] = torch.tensor(audio, dtype=torch.long)
        self.position = {name: [0, 0] for name in self.pools}  # [pass, offset] per pool

    def fraction(self, step: int) -> float:
        """Audio-dependent fraction at `step`: the curriculum ramp, then the target."""
        c = self.config
        if c.curriculum_steps == 0 or step >= c.curriculum_steps:
            return c.audio_fraction
        return c.curriculum_start + (c.audio_fraction - c.curriculum_start) * step / c.curriculum_steps

    def _order(self, pool: str, n_pass: int) -> torch.Tensor:
        code = POOLS.index(pool) if pool in POOLS else zlib.crc32(pool.encode())
        gen = torch.Generator().manual_seed(self.config.seed * 7919 + code * 104_729 + n_pass)
        return self.pools[pool][torch.randperm(len(self.pools[pool]), generator=gen)]

    def _take(self, pool: str, count: int) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            n_pass, offset = self.position[pool]
            order = self._order(pool, n_pass)
            grab = order[offset: offset + count - len(out)].tolist()
            out += grab
            offset += len(grab)
            self.position[pool] = [n_pass + 1, 0] if offset >= len(order) else [n_pass, offset]
        return out

    def batch(self, step: int) -> list[int]:
        """The global batch of `step`: audio rows first, then VL rows."""
        gen = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        is_audio = torch.rand(self.config.batch_size, generator=gen) < self.fraction(step)
        n_audio = int(is_audio.sum())
        if len(self.audio_pools) == 1:
            audio = self._take(self.audio_pools[0], n_audio)
        else:
            picks = torch.randint(len(self.audio_pools), (n_audio,), generator=gen).tolist()
            audio = [i for p in picks for i in self._take(self.audio_pools[p], 1)]
        return audio + self._take("vl", self.config.batch_size - n_audio)

    def state_dict(self) -> dict:
        return {"position": {k: list(v) for k, v in self.position.items()}}

    def load_state_dict(self, state: dict) -> None:
        saved = state["position"]
        if set(saved) != set(self.pools):
            raise ValueError(f"sampler state has pools {sorted(saved)}; this run's sampler has {sorted(self.pools)} "
                             "(was mix.balance changed?)")
        self.position = {k: list(saved[k]) for k in self.pools}
