"""`stage_b-outcomes` on a micro-world checkpoint: every (question, action) scored, counted and timed."""

from pathlib import Path

import numpy as np
import pytest

from envs.outcome_table import OutcomeTable
from shared.config import load_config
from stage_a.config import TrainConfig
from stage_a.train import main as train_main
from stage_b.outcomes import audio_preview, build_table


@pytest.fixture(scope="module")
def table(micro_paths: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> OutcomeTable:
    out = tmp_path_factory.mktemp("runs")
    args = [x for k, v in micro_paths.items() for x in (f"--{k}", v)]
    assert train_main(["--preset", "stage_a_micro", "--out_dir", str(out), *args]) == 0
    cfg = load_config(TrainConfig, "stage_a_micro", micro_paths)
    return build_table(cfg, out / "stage_a_micro" / "best", "test", [4, 8], batch_size=32, repeats=1)


def test_every_question_and_action_has_score_compute_and_latency(table: OutcomeTable) -> None:
    n = len(table.ids)
    assert table.actions.tolist() == [0, 4, 8] and table.score.shape == table.gflops.shape == (n, 3)
    assert ((table.score >= 0) & (table.score <= 1)).all() and (table.latency_ms > 0).all()
    encoder = table.provenance["encoder_gflops"]
    assert encoder > 0 and (table.gflops[:, 1:] > table.gflops[:, :1] + encoder * 0.99).all()
    assert (table.gflops[:, 2] >= table.gflops[:, 1]).all()  # more tokens cost more
    assert np.isfinite(table.features).all() and table.features.shape[0] == n
    assert table.provenance["split"] == "test" and len(table.provenance["checkpoint_hash"]) == 16


def test_table_round_trips_through_npz(table: OutcomeTable, tmp_path: Path) -> None:
    table.save(tmp_path / "t.npz")
    again = OutcomeTable.load(tmp_path / "t.npz")
    assert np.array_equal(again.score, table.score) and again.provenance == table.provenance


def test_audio_preview_statistics() -> None:
    sr = 16000
    t = np.arange(sr) / sr
    duration, rms, zcr, centroid = audio_preview(np.sin(2 * np.pi * 1000 * t).astype(np.float32), sr)
    assert duration == 1.0 and rms == pytest.approx(1 / np.sqrt(2), rel=1e-3)
    assert zcr == pytest.approx(2000 / sr, rel=0.01) and centroid == pytest.approx(1.0, rel=0.02)
