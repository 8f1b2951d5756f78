"""Request media and fields from HTTP bodies: base64 (JSON) or uploaded bytes (multipart) decoded into the image,
audio and k that `SafePipeline.prepare` takes, each failure a `BadRequest` naming its field.

Audio is a file (WAV, FLAC, OGG: whatever soundfile reads), mixed to mono like `shared.data.audio_io.load_audio`.
Its sample rate must be resampleable to the pipeline's rate by a polyphase filter of bounded size: between
MIN_RATE and MAX_RATE Hz, with a ratio to the target rate whose reduced terms are at most MAX_RATIO_TERM (every
standard rate qualifies; 44101 Hz against 16 kHz, a 16000/44101 filter, does not).
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image, UnidentifiedImageError

from shared.data.audio_io import to_mono

MIN_RATE, MAX_RATE = 4000, 192_000
MAX_RATIO_TERM = 1000
FIELDS = ("question", "image", "audio", "k")


class BadRequest(ValueError):
    """A request the server refuses: its HTTP status, the field at fault (None for the body as a whole) and why."""

    def __init__(self, field: str | None, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field, self.message, self.status = field, message, status


def from_value_error(err: ValueError) -> BadRequest:
    """A pipeline ValueError ("<field>: <value>; expected ...") as a 422 naming that field."""
    field, sep, rest = str(err).partition(": ")
    if sep and field in FIELDS:
        return BadRequest(field, rest)
    return BadRequest(None, str(err))


def from_base64(field: str, value: Any) -> bytes | None:
    """The bytes of a JSON field holding base64 text, or None for null."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(field, f"a JSON {type(value).__name__}; expected base64 text of a file, or null")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as err:
        raise BadRequest(field, f"{len(value)} characters that are not base64 ({err}); "
                                "expected base64 text of a file") from err


def decode_image(data: bytes) -> Image.Image:
    """An RGB image from the bytes of an image file."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except UnidentifiedImageError as err:
        raise BadRequest("image", f"{len(data)} bytes in no image format PIL recognises; "
                                  "expected a PNG, JPEG or other image file") from err
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        raise BadRequest("image", f"{len(data)} bytes that are not a readable image ({err}); "
                                  "expected a PNG, JPEG or other image file") from err


def check_rate(rate: int, target: int) -> None:
    """Refuse a sample rate that cannot be resampled to `target` with a bounded polyphase filter."""
    g = math.gcd(rate, target) if rate > 0 else 1
    if not MIN_RATE <= rate <= MAX_RATE or max(target // g, rate // g) > MAX_RATIO_TERM:
        raise BadRequest("audio", f"sample rate {rate} Hz cannot be resampled to {target} Hz; expected "
                                  f"{MIN_RATE}..{MAX_RATE} Hz with a ratio to {target} Hz whose reduced terms are at "
                                  f"most {MAX_RATIO_TERM} (e.g. 8000, 11025, 22050, 44100, 48000, 96000)")


def decode_audio(data: bytes, target_rate: int) -> tuple[np.ndarray, int]:
    """(mono float32 wave, its sample rate) from the bytes of an audio file; the pipeline resamples and checks it."""
    try:
        wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as err:
        detail = getattr(err, "error_string", None) or str(err)  # libsndfile's reason, without the stream's repr
        raise BadRequest("audio", f"{len(data)} bytes that are not a readable audio file ({detail}); "
                                  "expected a WAV, FLAC or OGG file") from err
    if wave.shape[0] == 0:
        raise BadRequest("audio", "a file with 0 samples; expected at least one")
    check_rate(int(rate), target_rate)
    return to_mono(wave), int(rate)


def form_k(value: Any) -> Any:
    """k from a multipart text field: "" or absent → None, an integer's digits → int, anything else as given."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest("k", "an uploaded file; expected a text field (an int, 'auto' or empty)")
    text = value.strip()
    return int(text) if text.lstrip("+-").isdigit() else value
