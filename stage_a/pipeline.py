"""Answer questions with a trained SAFE bridge: `SafePipeline` (the `safe-answer` and `safe-serve` commands use it).

The bridge folder's record (stage_a.provenance) names the base model and the frozen encoder it was trained with:
the base by its id (a folder or hub id), the encoder by its identity, from which the encoder's kind and id or
folder are read back ("clap:<path>:<front end>", "whisper:<path>:chunk<n>", "both:<clap>|<whisper>"). Either can
be overridden (`base=`, `clap=` / `whisper=`); both are checked against the record's weights hashes on load.

A request is an image (path, PIL image or HxWx3 uint8 array, or None), audio (path, (array, sample_rate), or
None) and a question. Audio is read at `DataSettings.sample_rate` as in Stage A training; audio None, or gate 0,
runs the base model's exact computation. k is an int in 0..k_max (0: no audio), None (the run's k_eval from the run
folder's summary.json, else 8; "auto" when a policy is attached) or "auto": an `AudioChooser` (a Stage B policy,
stage_b.chooser) picks no audio or k per request from the request's own pre-decision features.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from shared.data.audio_io import AudioError, load_audio, resample
from shared.encoders import build_encoder
from shared.features import pad_frames
from shared.loading import load_json
from stage_a.checkpointing import BASE_LM_FILE, bridge_folder
from stage_a.config import DataSettings
from stage_a.data import Collator
from stage_a.flops import safe_flops
from stage_a.fusion import check_gate
from stage_a.model import BRIDGE_FILE, CONFIG_FILE, SafeModel
from stage_a.prefix import PrefixSplicer
from stage_a.prompting import build_prompt, model_inputs
from stage_a.setup import load_base

log = logging.getLogger(__name__)
DEFAULT_K = 8
MAX_NEW_TOKENS = 4  # the Stage A evaluator's budget for questions (EvalSettings.max_new_tokens)
CLAP_FRONT_END_FIELDS = 8  # colon-separated fields of ClapEncoder's front-end description


def encoder_paths(identity: str) -> tuple[str, str | None, str | None]:
    """(kind, clap path, whisper path) read back from a recorded encoder identity (shared.encoders)."""
    kind, _, rest = identity.partition(":")
    if kind == "clap":
        return kind, rest.rsplit(":", CLAP_FRONT_END_FIELDS)[0], None
    if kind == "whisper":
        return kind, None, rest.rsplit(":", 1)[0]
    if kind == "both":
        clap, whisper = rest.split("|", 1)
        return kind, encoder_paths(clap)[1], encoder_paths(whisper)[2]
    raise ValueError(f"encoder identity {identity!r}; expected one starting 'clap:', 'whisper:' or 'both:'")


def run_k_eval(bridge_dir: Path) -> int:
    """The k the bridge's run evaluated at (k_eval of the run folder's summary.json), else DEFAULT_K."""
    for summary in (bridge_dir / "summary.json", bridge_dir.parent / "summary.json"):
        if summary.is_file():
            return int(load_json(summary, "a stage_a-train run summary", keys=("k_eval",))["k_eval"])
    log.info("%s: no run summary.json beside the bridge; default k is %d", bridge_dir, DEFAULT_K)
    return DEFAULT_K


@dataclass
class Request:
    """One checked question: its image (or None), its audio wave at the pipeline's sample rate (or None), and k
    (0 = no audio; None = the attached policy decides)."""

    image: Image.Image | None
    wave: np.ndarray | None
    question: str
    k: int | None


class AudioChooser(Protocol):
    """Picks k per request (0 = no audio) from the prompt inputs the model will see and the requests' waves."""

    def check(self, pipe: "SafePipeline") -> None:
        """Raise ValueError if this chooser's actions or features do not belong to `pipe`'s bridge."""

    def __call__(self, embeddings: torch.nn.Module, inputs: dict[str, torch.Tensor], waves: list[np.ndarray],
                 sample_rate: int) -> list[int]:
        ...


class SafePipeline:
    """A frozen base VL model, its trained SAFE bridge and its frozen audio encoder, answering raw requests."""

    def __init__(self, model: SafeModel, processor: Any, encoder: Any, default_k: int, device: str,
                 bridge_dir: Path | None = None, policy: AudioChooser | None = None) -> None:
        self.model, self.processor, self.encoder = model, processor, encoder
        self.collator = Collator(processor)
        self.default_k, self.device, self.bridge_dir = default_k, device, bridge_dir
        self.k_max = model.bridge_config.projector.k_max
        self.sample_rate = DataSettings.sample_rate
        self.policy = None
        if policy is not None:
            self.attach(policy)

    def attach(self, policy: AudioChooser) -> None:
        """Let `policy` choose k for requests with k None or "auto" (checked against this bridge first)."""
        policy.check(self)
        self.policy = policy

    @classmethod
    def from_pretrained(cls, bridge_dir: str | Path, base: str | None = None, clap: str | None = None,
                        whisper: str | None = None, device: str = "cpu", dtype: str = "float32",
                        strict: bool = True, policy: AudioChooser | None = None) -> "SafePipeline":
        """Load the bridge (a bridge folder or a stage_a-train run folder) with the base and encoder it records,
        and optionally a policy choosing k per request (stage_b.chooser.PolicyChooser.load(folder))."""
        folder = bridge_folder(Path(bridge_dir))
        if (folder / BASE_LM_FILE).is_file():
            raise ValueError(f"{folder / BASE_LM_FILE}: this run fine-tuned the base LM (full fine-tuning baseline); "
                             "SafePipeline serves bridges over a frozen base only")
        record = load_json(folder / CONFIG_FILE, BRIDGE_FILE).get("record") or {}
        base_id = base or (record.get("base") or {}).get("id")
        identity = (record.get("encoder") or {}).get("identity")
        if not base_id or (identity is None and not (clap or whisper)):
            raise ValueError(f"{folder / CONFIG_FILE}: the record names base {base_id!r} and encoder {identity!r}; "
                             "pass base= and clap= / whisper= for a bridge written without a record")
        if identity:
            kind, clap_path, whisper_path = encoder_paths(identity)
        else:
            log.warning("%s: no recorded encoder; using the given clap=%r whisper=%r", folder, clap, whisper)
            kind, clap_path, whisper_path = ("both" if clap and whisper else "clap" if clap else "whisper"), None, None
        base_model, processor = load_base(base_id, dtype, device)
        encoder = build_encoder(kind, clap or clap_path, whisper or whisper_path, device, "float32")
        model = SafeModel.from_bridge(base_model, folder, encoder, strict)
        model.projector.to(device)
        model.fusion.to(device)
        return cls(model.eval(), processor, encoder, run_k_eval(folder), device, folder, policy)

    def _image(self, image: Any) -> Image.Image | None:
        if image is None or isinstance(image, Image.Image):
            return None if image is None else image.convert("RGB")
        if isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"image: array of shape {image.shape}; expected HxWx3")
            return Image.fromarray(image.astype(np.uint8))
        path = Path(image)
        if not path.is_file():
            raise ValueError(f"image: file {str(path)!r} does not exist; expected an image file, PIL image or array")
        with Image.open(path) as im:
            return im.convert("RGB")

    def _wave(self, audio: Any) -> np.ndarray | None:
        if audio is None:
            return None
        if isinstance(audio, tuple):
            if len(audio) != 2 or not isinstance(audio[1], int) or audio[1] <= 0:
                raise ValueError(f"audio: tuple {tuple(type(a).__name__ for a in audio)}; "
                                 "expected (array, positive int sample_rate)")
            wave = np.asarray(audio[0], dtype=np.float32)
            if wave.ndim != 1 or wave.size == 0:
                raise ValueError(f"audio: array of shape {wave.shape}; expected a non-empty 1-D mono wave")
            if not np.isfinite(wave).all():
                raise ValueError(f"audio: array holds {int((~np.isfinite(wave)).sum())} NaN/inf samples; "
                                 "expected finite samples")
            return resample(wave, audio[1], self.sample_rate)
        if not Path(audio).is_file():
            raise ValueError(f"audio: file {str(audio)!r} does not exist; expected an audio file or (array, rate)")
        try:
            wave = load_audio(audio, self.sample_rate)
        except AudioError as err:
            raise ValueError(f"audio: {err}") from err
        if not np.isfinite(wave).all():
            raise ValueError(f"audio: file {str(audio)!r} holds NaN/inf samples; expected finite samples")
        return wave

    def prepare(self, image: Any = None, audio: Any = None, question: Any = None, k: Any = None) -> Request:
        """One request checked and decoded (image to RGB, audio to a wave at the pipeline's rate); a ValueError names
        the bad field, its value and what was expected."""
        if k is None:
            k = "auto" if self.policy is not None else self.default_k
        if k == "auto":
            if self.policy is None:
                raise ValueError("k: 'auto' needs a Stage B policy (policy=... or --policy); expected an int or None")
            k = None
        elif not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= self.k_max:
            raise ValueError(f"k: {k!r}; expected an int in 0..{self.k_max} (0: no audio; the bridge's k_max), "
                             "'auto' or None (JSON null)")
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"question: {question!r}; expected a non-empty string")
        return Request(self._image(image), self._wave(audio), question, k)

    def _inputs(self, requests: list[Request]) -> dict[str, torch.Tensor]:
        """The processor's left-padded prompt inputs of `requests` on the pipeline's device."""
        prompts = [build_prompt(self.processor, r.question, image=r.image is not None) for r in requests]
        inputs = model_inputs(self.processor, prompts, [r.image for r in requests], "left")
        return {name: value.to(self.device) for name, value in inputs.items()}

    def _choose(self, requests: list[Request], inputs: dict[str, torch.Tensor]) -> list[Request]:
        """Requests with k fixed: the policy's choice where k is None (no audio → 0), from rows of `inputs`."""
        undecided = [i for i, r in enumerate(requests) if r.k is None and r.wave is not None]
        chosen = dict.fromkeys(range(len(requests)), 0)
        if undecided:
            assert self.policy is not None  # prepare() only leaves k None with a policy attached
            rows = torch.tensor(undecided, device=self.device)
            picks = self.policy(self.model.base.get_input_embeddings(), {n: v[rows] for n, v in inputs.items()},
                                [requests[i].wave for i in undecided], self.sample_rate)
            chosen.update(zip(undecided, picks))
        return [r if r.k is not None else Request(r.image, r.wave, r.question, chosen[i])
                for i, r in enumerate(requests)]

    @torch.no_grad()
    def _answer(self, requests: list[Request], inputs: dict[str, torch.Tensor], gate: float) -> list[dict]:
        """Answer requests in one generate call, each row with its own k; rows without audio or with k 0 take the
        base path (no frames, so no active audio token)."""
        start = time.perf_counter()
        with_audio = [i for i, r in enumerate(requests) if r.wave is not None and r.k]
        audio: dict[str, Any] = {}
        frames_per_row = [0] * len(requests)
        if with_audio and gate > 0:
            frames, mask = self.encoder.encode([requests[i].wave for i in with_audio], self.sample_rate)
            features = [f[m.bool()].float().cpu() for f, m in zip(frames, mask)]
            dim = features[0].shape[1]
            rows = [features[with_audio.index(i)] if i in with_audio else torch.zeros(0, dim)
                    for i in range(len(requests))]
            padded, frame_mask = pad_frames(rows)
            frames_per_row = [row.shape[0] for row in rows]
            ks = sorted({requests[i].k for i in with_audio})
            k: int | list[int] = ks[0] if len(ks) == 1 else [r.k or ks[0] for r in requests]
            audio = {"audio_frames": padded.to(self.device), "frame_mask": frame_mask.to(self.device),
                     "k": k, "gate": gate}
        generated = self.model.generate(**audio, **inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        answers = self.collator.decode(generated, inputs["input_ids"].shape[1])
        latency = 1000.0 * (time.perf_counter() - start) / len(requests)
        out = []
        for i, (request, answer) in enumerate(zip(requests, answers)):
            used = frames_per_row[i] > 0
            tokens = int(inputs["attention_mask"][i].sum())
            flops = safe_flops(self.model, self.encoder, request.k if used else 0, tokens, frames_per_row[i])
            out.append({"answer": answer, "action": {"audio": used, "k": request.k if used else 0},
                        "gflops": flops / 1e9, "latency_ms": latency})
        return out

    @property
    def one_generate_call(self) -> bool:
        """Whether `answer` runs a whole batch in one generate call whatever its ks (not with prefix fusion)."""
        return not isinstance(self.model.fusion, PrefixSplicer)

    def answer(self, requests: list[Request], gate: float = 1.0) -> list[dict]:
        """Answer prepared requests in one generate call (the policy first decides where k is None); prefix fusion,
        which takes one k per call, runs one call per k."""
        check_gate(gate)  # a negative or NaN gate is an error, never "no audio"
        start = time.perf_counter()
        inputs = self._inputs(requests)
        requests = self._choose(requests, inputs)
        prepare_ms = 1000.0 * (time.perf_counter() - start) / len(requests)
        if self.one_generate_call or len({r.k for r in requests if r.k}) <= 1:
            results = self._answer(requests, inputs, gate)
        else:
            results = [{} for _ in requests]
            for value in sorted({r.k for r in requests}):
                rows = [i for i, r in enumerate(requests) if r.k == value]
                group = [requests[i] for i in rows]
                for i, result in zip(rows, self._answer(group, self._inputs(group), gate)):
                    results[i] = result
        for result in results:
            result["latency_ms"] += prepare_ms
        return results

    def __call__(self, image: Any = None, audio: Any = None, question: Any = None, k: Any = None,
                 gate: float = 1.0) -> dict | list[dict]:
        """Answer one request, or a batch when `question` is a list (image and audio then lists of the same length)."""
        if not isinstance(question, list):
            return self([image], [audio], [question], k, gate)[0]
        images = image if isinstance(image, list) else [image] * len(question)
        audios = audio if isinstance(audio, list) else [audio] * len(question)
        ks = k if isinstance(k, list) else [k] * len(question)
        if not question or not len(images) == len(audios) == len(ks) == len(question):
            raise ValueError(f"question: a batch of {len(question)} with {len(images)} images, {len(audios)} audio "
                             f"and {len(ks)} k; expected equal, non-zero lengths")
        return self.answer([self.prepare(*row) for row in zip(images, audios, question, ks)], gate)
