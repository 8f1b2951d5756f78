"""Training state and bridge folders of stage_a.checkpointing: JSON round trip, checkpoints of the dict era, errors,
and a real checkpoint folder read back, or its damaged files named."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from shared.cli import InputError
from stage_a.checkpointing import (OPTIMIZER_FILE, STATE_FILE, BestEval, TrainState, bridge_folder, load_checkpoint,
                                   save_checkpoint)
from stage_a.fusion import FusionConfig
from stage_a.model import CONFIG_FILE, WEIGHTS_FILE, BridgeConfig, SafeModel
from stage_a.projector import ProjectorConfig

PARTS = {"sampler": {"position": 7}, "monitor": {"below/projector": 0, "base_grad_steps": 0}, "scaler": {}}

# state.json as the trainer wrote it when its state was a plain dict (before TrainState): the same top-level keys.
LEGACY = {"step": 12, "bad_steps": 1, "best": {"step": 8, "audio_acc": 0.42, "vl_degradation_pts": 0.25},
          "history": [{"step": 4, "audio_acc": 0.3, "vl_degradation_pts": 0.0, "gate0_max_abs_logit_diff": 0.0}],
          "train_seconds": 3.5, "stopped_early": False, "breaches": 0, "drawn": 96,
          "family_counts": {"audio": 50, "visual": 46}, "qtype_counts": {"audio.pitch": 50, "visual.count": 46},
          **PARTS}


def test_state_round_trips_through_json() -> None:
    state = TrainState(step=3, best=BestEval(2, 0.5, 0.1), history=[{"step": 2, "audio_acc": 0.5}],
                       family_counts={"audio": 4})
    data = json.loads(json.dumps(state.to_json(PARTS)))
    restored, parts = TrainState.from_json(data, "state.json")
    assert restored == state and parts == PARTS


def test_a_checkpoint_written_with_the_dict_resumes() -> None:
    state, parts = TrainState.from_json(json.loads(json.dumps(LEGACY)), "old/state.json")
    assert state.step == 12 and state.best == BestEval(8, 0.42, 0.25) and state.drawn == 96
    assert state.to_json(parts) == LEGACY


def test_a_checkpoint_before_the_loss_scaler_has_no_scaler_part() -> None:
    old = {k: v for k, v in LEGACY.items() if k != "scaler"}
    assert "scaler" not in TrainState.from_json(old, "state.json")[1]


@pytest.mark.parametrize("change, named", [
    ({"drop": "drawn"}, "missing keys ['drawn']"),
    ({"drop": "monitor"}, "missing keys ['monitor']"),
    ({"add": "epoch"}, "unknown keys ['epoch']"),
])
def test_missing_or_unknown_keys_are_named_with_the_file(change: dict, named: str) -> None:
    data = {k: v for k, v in LEGACY.items() if k != change.get("drop")}
    if "add" in change:
        data[change["add"]] = 1
    with pytest.raises(ValueError, match="run/checkpoint/state.json: training state") as err:
        TrainState.from_json(data, "run/checkpoint/state.json")
    assert named in str(err.value)


def test_a_malformed_best_is_named() -> None:
    with pytest.raises(ValueError, match=r"'best' is \{'step': 8\}; expected null or an object with keys"):
        TrainState.from_json({**LEGACY, "best": {"step": 8}}, "state.json")


def test_unknown_parts_are_refused() -> None:
    with pytest.raises(ValueError, match=r"parts \['fisher'\] are unknown"):
        TrainState().to_json({"fisher": {}})


def test_bridge_folder_finds_the_bridge_or_the_runs_best(tmp_path: Path) -> None:
    (tmp_path / "run" / "best").mkdir(parents=True)
    (tmp_path / "run" / "best" / WEIGHTS_FILE).write_bytes(b"")
    assert bridge_folder(tmp_path / "run") == tmp_path / "run" / "best"
    assert bridge_folder(tmp_path / "run" / "best") == tmp_path / "run" / "best"
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no {WEIGHTS_FILE} there or in"):
        bridge_folder(tmp_path)


@pytest.fixture(scope="module")
def checkpoint(llava_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint folder written by save_checkpoint for a SAFE bridge on the tiny LLaVA, after one AdamW step."""
    torch.manual_seed(0)
    model = SafeModel(LlavaForConditionalGeneration.from_pretrained(llava_dir),
                      BridgeConfig(ProjectorConfig(audio_dim=24, hidden_size=32, k_max=16), FusionConfig(rank=8)))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    folder = tmp_path_factory.mktemp("run") / "checkpoint"
    save_checkpoint(folder, model, optimizer, scheduler, {"seen": torch.zeros(10, dtype=torch.bool)},
                    TrainState(step=1).to_json(PARTS))
    return folder


def test_a_checkpoint_reads_back_with_its_bridge_record(checkpoint: Path) -> None:
    loaded = load_checkpoint(checkpoint)
    assert loaded.state["step"] == 1 and loaded.tensors["seen"].shape == (10,) and loaded.optimizer["state"]
    assert loaded.bridge_config["record"]["base"]["id"] and loaded.bridge.keys() and loaded.base_lm == {}


@pytest.mark.parametrize("name, kind", [(WEIGHTS_FILE, "safetensors"), (OPTIMIZER_FILE, "torch.save"),
                                        (STATE_FILE, "JSON"), (CONFIG_FILE, "JSON")])
@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_checkpoint_file_is_named(checkpoint: Path, tmp_path: Path, name: str, kind: str,
                                            damage: str) -> None:
    folder = shutil.copytree(checkpoint, tmp_path / "checkpoint")
    content = (folder / name).read_bytes()
    (folder / name).write_bytes(content[: len(content) // 2] if damage == "truncated" else b"")
    with pytest.raises(InputError) as err:
        load_checkpoint(folder)
    message = str(err.value)
    assert message.startswith(f"{folder / name}: not a readable {kind} file (") and "\n" not in message
    assert ("truncated or corrupt" if damage == "truncated" else "empty file (0 bytes)") in message
    assert message.endswith("expected this part of a checkpoint folder written by stage_a-train")


def test_an_optimizer_file_without_its_states_is_named(checkpoint: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(checkpoint, tmp_path / "checkpoint")
    torch.save({"epoch": 3}, folder / OPTIMIZER_FILE)
    with pytest.raises(InputError, match=f"{OPTIMIZER_FILE}: holds no 'optimizer' and 'scheduler' states"):
        load_checkpoint(folder)
