"""`SafePipeline` and `safe-answer` on a micro-world run: same answers as the Stage A evaluator, checked input."""

from pathlib import Path

import numpy as np
import pytest

from shared.config import load_config
from shared.data.audio_io import load_audio
from stage_a.config import TrainConfig
from stage_a.evaluate import EvalSettings, generate_answers
from stage_a.pipeline import SafePipeline, encoder_paths
from stage_a.prompting import build_prompt, model_inputs
from stage_a.setup import build_setup, load_base
from stage_a.train import main as train_main

RATE = 16000


@pytest.fixture(scope="module")
def run_dir(micro_paths: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    args = [x for k, v in micro_paths.items() for x in (f"--{k}", v)]
    assert train_main(["--preset", "stage_a_micro", "--out_dir", str(out), "--steps", "4", *args]) == 0
    return out / "stage_a_micro"


@pytest.fixture(scope="module")
def pipe(run_dir: Path) -> SafePipeline:
    return SafePipeline.from_pretrained(run_dir)


@pytest.fixture(scope="module")
def setup(run_dir: Path, micro_paths: dict[str, str]):
    cfg = load_config(TrainConfig, "stage_a_micro", micro_paths)
    return build_setup(cfg, splits=("test",), bridge_dir=run_dir / "best")


def _requests(split, rows: list[int]) -> dict[str, list]:
    clips = [split.clip(i) for i in rows]
    return {"image": [split.visuals[i] for i in rows], "question": [split.samples[i].question for i in rows],
            "audio": [(load_audio(c.path, RATE, c.start, c.end), RATE) for c in clips]}


def _rows(split) -> list[int]:
    return [i for i, s in enumerate(split.samples) if s.family != "caption"]


def test_encoder_paths_read_back_the_recorded_identity(pipe: SafePipeline, micro_paths: dict) -> None:
    assert encoder_paths(pipe.encoder.identity) == ("clap", micro_paths["model.clap"], None)
    assert encoder_paths("whisper:openai/whisper-tiny:chunk30") == ("whisper", None, "openai/whisper-tiny")


def test_answers_equal_the_evaluators_with_and_without_audio(pipe: SafePipeline, setup) -> None:
    split, rows = setup.test, _rows(setup.test)
    settings = EvalSettings(k=pipe.default_k, batch_size=1000)
    requests = _requests(split, rows)
    with_audio = generate_answers(setup.model, setup.collator, split, rows, settings, audio=True)
    results = pipe(**requests)
    assert [r["answer"] for r in results] == [with_audio[i] for i in rows]
    assert all(r["action"] == {"audio": True, "k": pipe.default_k} and r["gflops"] > 0 for r in results)
    without = generate_answers(setup.model, setup.collator, split, rows, settings, audio=False)
    bare = pipe(**{**requests, "audio": [None] * len(rows)})
    assert [r["answer"] for r in bare] == [without[i] for i in rows]
    assert all(r["action"] == {"audio": False, "k": 0} for r in bare)
    zero = pipe(**{**requests, "k": 0})  # k = 0: the no-audio action, even with audio given
    assert [r["answer"] for r in zero] == [without[i] for i in rows]
    assert all(r["action"] == {"audio": False, "k": 0} for r in zero)
    assert all(b["gflops"] < a["gflops"] for a, b in zip(results, bare))
    assert with_audio != without  # audio changes some answer, so the comparison can tell them apart


def test_batch_equals_singles_and_no_audio_equals_the_bare_base(pipe: SafePipeline, setup,
                                                                micro_paths: dict) -> None:
    split = setup.test
    rows = _rows(split)[:6]
    requests = _requests(split, rows)
    mixed = [a if j % 2 else None for j, a in enumerate(requests["audio"])]  # audio and no-audio in one batch
    batch = pipe(image=requests["image"], audio=mixed, question=requests["question"], k=4)
    singles = [pipe(image=im, audio=a, question=q, k=4) for im, a, q in zip(requests["image"], mixed,
                                                                            requests["question"])]
    assert [r["answer"] for r in batch] == [r["answer"] for r in singles]
    ks = [4, 16, 0, 8, 16, 1]  # every row its own k, answered in one generate call
    per_row = pipe(image=requests["image"], audio=requests["audio"], question=requests["question"], k=ks)
    alone = [pipe(image=im, audio=a, question=q, k=k) for im, a, q, k in zip(requests["image"], requests["audio"],
                                                                             requests["question"], ks)]
    assert [(r["answer"], r["action"], r["gflops"]) for r in per_row] == \
        [(r["answer"], r["action"], r["gflops"]) for r in alone]
    base, processor = load_base(micro_paths["model.base_vl"], "float32", "cpu")
    for j, i in enumerate(rows):
        if mixed[j] is None:
            image = split.image(i)
            inputs = model_inputs(processor, [build_prompt(processor, split.samples[i].question, image is not None)],
                                  [image], "left")
            out = base.generate(**inputs, max_new_tokens=4, do_sample=False)
            assert batch[j]["answer"] == setup.collator.decode(out, inputs["input_ids"].shape[1])[0]


@pytest.mark.parametrize("kwargs, match", [
    ({"image": "/no/such.png"}, r"image: file '/no/such.png' does not exist"),
    ({"audio": "/no/such.wav"}, r"audio: file '/no/such.wav' does not exist"),
    ({"question": "  "}, r"question: '  '; expected a non-empty string"),
    ({"k": -1}, r"k: -1; expected an int in 0\.\.\d+"),
    ({"k": 10_000}, r"k: 10000; expected an int in 0\.\.\d+"),
    ({"k": "auto"}, r"k: 'auto' needs a Stage B policy"),
    ({"audio": (np.array([0.1, np.nan], dtype=np.float32), RATE)}, r"audio: array holds 1 NaN"),
])
def test_bad_input_is_named(pipe: SafePipeline, kwargs: dict, match: str) -> None:
    request = {"image": None, "audio": None, "question": "what color is the circle?", "k": None, **kwargs}
    with pytest.raises(ValueError, match=match):
        pipe(**request)


def test_a_run_with_a_fine_tuned_base_lm_is_refused(tmp_path: Path) -> None:
    from stage_a.checkpointing import BASE_LM_FILE
    from stage_a.model import CONFIG_FILE, WEIGHTS_FILE

    (tmp_path / CONFIG_FILE).write_text("{}")
    (tmp_path / WEIGHTS_FILE).write_bytes(b"")
    (tmp_path / BASE_LM_FILE).write_bytes(b"")
    with pytest.raises(ValueError, match="fine-tuned the base LM"):
        SafePipeline.from_pretrained(tmp_path)
