"""Retention mechanisms: distillation loss, online EWC and null-space projection, on small tensors."""

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from configs.retention_variants import VARIANTS
from stage_a.fusion import FusionBlock, FusionConfig
from stage_a.retention import NullSpaceProjector, OnlineFisher, RetentionConfig, distill_loss, retention_variant

torch.set_num_threads(1)


def _logits(seed: int, shape: tuple[int, ...] = (2, 5, 7)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


MASK = torch.tensor([[False, True, True, False, False], [False, False, True, True, True]])


# ---- RetentionConfig and presets ------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, expected", [
    ("kl_weight", -0.1, ">= 0"), ("fisher_weight", -1.0, ">= 0"), ("kl_temperature", 0.0, "> 0"),
    ("kl_kind", "mse", "'kl', 'jsd'"), ("fisher_decay", 1.0, ">= 0 and < 1"),
    ("nullspace_energy", 1.0, "> 0 and < 1"), ("fisher_every", 0, ">= 1"), ("nullspace_batches", 0, ">= 1"),
    ("kl_weight", float("nan"), ">= 0"), ("kl_temperature", float("inf"), "> 0"),
])
def test_config_rejects_bad_values_naming_field_and_value(field: str, value: object, expected: str) -> None:
    with pytest.raises(ValueError, match=field) as err:
        RetentionConfig(**{field: value})
    assert str(value) in str(err.value) and expected in str(err.value)


def test_variants_construct_differ_and_are_copies() -> None:
    configs = {name: retention_variant(name) for name in ("none", "kl", "fisher", "nullspace", "full")}
    assert len({repr(c) for c in configs.values()}) == 5
    assert configs["none"] == RetentionConfig()
    full = configs["full"]
    assert full.kl_weight == 0.2 and full.kl_temperature == 2.0 and full.fisher_weight == 0.1 and full.nullspace
    configs["kl"].kl_weight = 9.0
    assert VARIANTS["kl"]["kl_weight"] == 0.2 and retention_variant("kl").kl_weight == 0.2


def test_unknown_variant_names_itself_and_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="'ewc'") as err:
        retention_variant("ewc")
    assert all(name in str(err.value) for name in VARIANTS)


# ---- distill_loss -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["kl", "jsd"])
def test_distill_zero_when_equal_positive_when_different(kind: str) -> None:
    teacher = _logits(0)
    assert distill_loss(teacher.clone(), teacher, MASK, 2.0, kind).abs() < 1e-6
    assert distill_loss(_logits(1), teacher, MASK, 2.0, kind) > 1e-2


@pytest.mark.parametrize("kind", ["kl", "jsd"])
def test_distill_ignores_unmasked_positions(kind: str) -> None:
    student, teacher = _logits(1), _logits(0)
    reference = distill_loss(student, teacher, MASK, 2.0, kind)
    garbage_s, garbage_t = student.clone(), teacher.clone()
    garbage_s[~MASK], garbage_t[~MASK] = 1e4, -1e4
    garbage_s[0, 0] = float("inf")
    garbage_t[1, 0] = float("nan")
    assert torch.equal(distill_loss(garbage_s, garbage_t, MASK, 2.0, kind), reference)
    garbage_s[~MASK] = torch.randn(int((~MASK).sum()), 7)
    assert torch.equal(distill_loss(garbage_s, garbage_t, MASK, 2.0, kind), reference)


@pytest.mark.parametrize("kind", ["kl", "jsd"])
def test_distill_is_averaged_per_token(kind: str) -> None:
    student, teacher = _logits(1, (1, 3, 7)), _logits(0, (1, 3, 7))
    one = distill_loss(student, teacher, torch.tensor([[True, False, False]]), 2.0, kind)
    repeated = torch.tensor([[True, True, True]])
    student[:, 1:], teacher[:, 1:] = student[:, :1], teacher[:, :1]
    assert torch.allclose(distill_loss(student, teacher, repeated, 2.0, kind), one, rtol=1e-6)


def test_distill_empty_mask_is_zero_with_a_grad_path() -> None:
    student = _logits(1).requires_grad_()
    loss = distill_loss(student, _logits(0), torch.zeros(2, 5, dtype=torch.bool), 2.0)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(student.grad, torch.zeros_like(student))


def test_distill_kl_matches_hand_computation_with_t_squared_scaling() -> None:
    student, teacher = _logits(1, (1, 1, 7)), _logits(0, (1, 1, 7))
    mask, temperature = torch.ones(1, 1, dtype=torch.bool), 3.0
    p = torch.softmax(teacher[0, 0] / temperature, -1)
    q = torch.softmax(student[0, 0] / temperature, -1)
    by_hand = temperature**2 * float((p * (p / q).log()).sum())
    assert distill_loss(student, teacher, mask, temperature).item() == pytest.approx(by_hand, rel=1e-5)


def test_distill_t_squared_makes_small_differences_temperature_free() -> None:
    # Uniform teacher, student = teacher + small delta: KL_T ~ Var(delta) / (2 T^2), so T^2 KL_T ~ Var(delta) / 2.
    delta = _logits(2, (1, 1, 7)) * 1e-2
    mask = torch.ones(1, 1, dtype=torch.bool)
    expected = float(delta.var(unbiased=False)) / 2
    for temperature in (1.0, 4.0):
        loss = distill_loss(delta, torch.zeros_like(delta), mask, temperature)
        assert loss.item() == pytest.approx(expected, rel=2e-2)


def test_jsd_matches_hand_computation_is_symmetric_and_bounded() -> None:
    a, b, temperature = _logits(0), _logits(1), 2.0
    ab, ba = distill_loss(a, b, MASK, temperature, "jsd"), distill_loss(b, a, MASK, temperature, "jsd")
    assert torch.allclose(ab, ba, rtol=1e-6)
    p, q = torch.softmax(a[MASK] / temperature, -1), torch.softmax(b[MASK] / temperature, -1)
    m = (p + q) / 2
    per_token = 0.5 * ((p * (p / m).log()).sum(-1) + (q * (q / m).log()).sum(-1))
    by_hand = temperature**2 * float(per_token.mean())
    assert ab.item() == pytest.approx(by_hand, rel=1e-5)
    far = distill_loss(a * 100, b * 100, MASK, temperature, "jsd")  # near one-hot, disjoint: JSD -> ln 2
    assert 0.5 * math.log(2) * temperature**2 < far.item() <= math.log(2) * temperature**2 + 1e-5


def test_distill_gradient_reaches_student_only() -> None:
    student, teacher = _logits(1).requires_grad_(), _logits(0).requires_grad_()
    distill_loss(student, teacher, MASK, 2.0).backward()
    assert teacher.grad is None
    assert student.grad[MASK].abs().sum() > 0 and student.grad[~MASK].abs().sum() == 0


# ---- OnlineFisher -----------------------------------------------------------------------------------------

def _toy() -> tuple[dict[str, nn.Parameter], torch.Tensor, torch.Tensor]:
    """Two parameters; `used` always matters to the loss, `late` only once it is switched in."""
    gen = torch.Generator().manual_seed(0)
    params = {"used": nn.Parameter(torch.randn(3, 4, generator=gen)), "late": nn.Parameter(torch.randn(4, generator=gen))}
    return params, torch.randn(5, 4, generator=gen), torch.randn(5, 3, generator=gen)


def _losses(params: dict[str, nn.Parameter], x: torch.Tensor, y: torch.Tensor, with_late: bool) -> list:
    def loss(i: int) -> torch.Tensor:
        h = x[i:i + 2] * params["late"] if with_late else x[i:i + 2]
        return ((h @ params["used"].T - y[i:i + 2]) ** 2).sum()
    return [lambda i=i: loss(i) for i in range(3)]


def _expected_new(params: dict[str, nn.Parameter], losses: list) -> dict[str, torch.Tensor]:
    """The normalised new estimate computed independently: mean squared grads over batches / their global mean."""
    squares = {n: torch.zeros_like(p) for n, p in params.items()}
    for fn in losses:
        grads = torch.autograd.grad(fn(), list(params.values()), allow_unused=True)
        for n, g in zip(params, grads):
            squares[n] += 0 if g is None else g.square() / len(losses)
    mean = torch.cat([s.flatten() for s in squares.values()]).mean()
    return {n: s / mean for n, s in squares.items()}


def test_fisher_penalty_zero_before_and_right_after_estimate_then_positive() -> None:
    params, x, y = _toy()
    fisher = OnlineFisher(params, decay=0.5)
    before = fisher.penalty()
    assert before.dim() == 0 and before.item() == 0.0
    fisher.estimate(_losses(params, x, y, with_late=True))
    assert fisher.penalty().item() == 0.0
    with torch.no_grad():
        params["used"].add_(0.1)
    assert fisher.penalty().item() > 0


def test_fisher_first_estimate_is_mean_one_and_misses_unused_parameters() -> None:
    params, x, y = _toy()
    fisher = OnlineFisher(params, decay=0.5)
    losses = _losses(params, x, y, with_late=False)
    stats = fisher.estimate(losses)
    expected = _expected_new(params, losses)
    assert torch.allclose(fisher.fisher["used"], expected["used"], rtol=1e-5)
    assert torch.equal(fisher.fisher["late"], torch.zeros(4))
    assert stats["mean"] == pytest.approx(1.0, rel=1e-6)
    assert stats["coverage"] == pytest.approx(12 / 16) and stats["coverage.late"] == 0.0
    assert fisher.estimates == 1


def test_fisher_online_fold_extends_coverage() -> None:
    params, x, y = _toy()
    fisher = OnlineFisher(params, decay=0.25)
    fisher.estimate(_losses(params, x, y, with_late=False))
    first_used = fisher.fisher["used"].clone()
    with torch.no_grad():
        params["used"].mul_(0.5)
    losses = _losses(params, x, y, with_late=True)
    stats = fisher.estimate(losses)
    new = _expected_new(params, losses)
    assert stats["coverage"] == 1.0 and fisher.estimates == 2
    assert torch.allclose(fisher.fisher["late"], 0.75 * new["late"], rtol=1e-5)
    assert torch.allclose(fisher.fisher["used"], 0.25 * first_used + 0.75 * new["used"], rtol=1e-5)
    assert stats["mean"] == pytest.approx(1.0, rel=1e-5)  # a fold of mean-one estimates stays mean one
    assert torch.equal(fisher.anchor["used"], params["used"].detach())  # re-anchored at the current values


def test_fisher_penalty_gradient_is_two_f_times_displacement() -> None:
    params, x, y = _toy()
    fisher = OnlineFisher(params, decay=0.5)
    fisher.estimate(_losses(params, x, y, with_late=True))
    with torch.no_grad():
        for p in params.values():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    grads = torch.autograd.grad(fisher.penalty(), list(params.values()))
    for (name, p), grad in zip(params.items(), grads):
        assert torch.allclose(grad, 2 * fisher.fisher[name] * (p.detach() - fisher.anchor[name]), rtol=1e-5)


def test_fisher_sees_only_fusion_out_at_zero_init() -> None:
    """Why the Fisher is online: at init the zero W_out blocks every other gradient of the fusion block."""
    torch.manual_seed(0)
    block = FusionBlock(16, FusionConfig(rank=4, heads=2))
    params = dict(block.named_parameters())
    hidden, audio = torch.randn(2, 3, 16), torch.randn(2, 4, 16)
    fused = lambda: block(hidden, audio, torch.ones(2, 4, dtype=torch.bool), torch.ones(2)).square().sum()  # noqa: E731
    stats = OnlineFisher(params, decay=0.5).estimate([fused])
    assert stats["coverage.out.weight"] == 1.0
    assert all(stats[f"coverage.{n}"] == 0.0 for n in params if n != "out.weight")


def test_fisher_state_round_trips_through_safetensors(tmp_path: Path) -> None:
    params, x, y = _toy()
    fisher = OnlineFisher(params, decay=0.5)
    fisher.estimate(_losses(params, x, y, with_late=True))
    with torch.no_grad():
        params["late"].add_(0.3)
    save_file(fisher.state_dict(), str(tmp_path / "fisher.safetensors"))
    fresh = OnlineFisher(params, decay=0.5)
    fresh.load_state_dict(load_file(str(tmp_path / "fisher.safetensors")))
    assert fresh.estimates == 1 and fresh.penalty().item() == pytest.approx(fisher.penalty().item(), rel=1e-7)
    with pytest.raises(ValueError, match="anchor.used"):
        fresh.load_state_dict({k: v for k, v in fisher.state_dict().items() if k != "anchor.used"})


def test_fisher_rejects_losses_without_a_graph() -> None:
    params, _, _ = _toy()
    with pytest.raises(ValueError, match="does not depend"):
        OnlineFisher(params, decay=0.5).estimate([lambda: torch.tensor(1.0)])


# ---- NullSpaceProjector ---------------------------------------------------------------------------------

def _subspace_setup() -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """Linear(16 -> 8), (B, L, 16) inputs confined to a random 4-dim subspace, and an orthogonal input."""
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    basis, _ = torch.linalg.qr(torch.randn(16, 16))
    inside = torch.randn(8, 6, 4) @ basis[:, :4].T
    outside = basis[:, 4:] @ torch.randn(12)
    return layer, inside, outside


def _train_step(layer: nn.Linear, x: torch.Tensor, projector: NullSpaceProjector | None) -> None:
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, weight_decay=0.1)
    loss = (layer(x) - 1).square().mean() + layer(torch.randn(4, 16)).square().mean()
    loss.backward()
    if projector:
        projector.snapshot()
    optimizer.step()
    if projector:
        projector.project()


def _collected(layer: nn.Linear, inside: torch.Tensor) -> NullSpaceProjector:
    projector = NullSpaceProjector({"q": layer}, energy=0.98)
    with torch.no_grad(), projector.collect():
        reference = layer(inside[:4])
        assert len(layer._forward_pre_hooks) == 1
        assert torch.equal(layer(inside[:4]), reference)  # the hook does not change outputs
        layer(inside[4:])
    assert not layer._forward_pre_hooks
    return projector


def test_nullspace_keeps_outputs_on_protected_inputs() -> None:
    layer, inside, outside = _subspace_setup()
    projector = _collected(layer, inside)
    assert projector.ranks() == {"q": 0}
    assert projector.refresh() == {"q": 4} == projector.ranks()
    with torch.no_grad():
        before_in, before_out, bias = layer(inside), layer(outside), layer.bias.clone()
    _train_step(layer, inside, projector)
    with torch.no_grad():
        # the bias is not projected, so compare the weight's contribution
        change_in = (layer(inside) - layer.bias) - (before_in - bias)
        change_out = (layer(outside) - layer.bias) - (before_out - bias)
    assert change_in.norm() <= 1e-5 * before_in.norm()
    assert change_out.norm() > 1e-2 * before_out.norm()


def test_without_projection_the_outputs_change() -> None:
    layer, inside, _ = _subspace_setup()
    with torch.no_grad():
        before = layer(inside) - layer.bias
    _train_step(layer, inside, None)
    with torch.no_grad():
        assert ((layer(inside) - layer.bias) - before).norm() > 1e-2 * before.norm()


def test_nullspace_refresh_without_inputs_names_the_module() -> None:
    layer, inside, _ = _subspace_setup()
    projector = _collected(layer, inside)
    projector.refresh()
    with pytest.raises(ValueError, match="no inputs were collected for protected module 'q'"):
        projector.refresh()  # accumulators were reset by the first refresh


def test_nullspace_project_without_basis_is_a_no_op_and_needs_snapshot_with_one() -> None:
    layer, inside, _ = _subspace_setup()
    projector = NullSpaceProjector({"q": layer}, energy=0.98)
    weight = layer.weight.detach().clone()
    projector.project()
    assert torch.equal(layer.weight, weight)
    projector = _collected(layer, inside)
    projector.refresh()
    with pytest.raises(RuntimeError, match="snapshot"):
        projector.project()


def test_nullspace_state_round_trips_through_safetensors(tmp_path: Path) -> None:
    layer, inside, _ = _subspace_setup()
    projector = _collected(layer, inside)
    projector.refresh()
    save_file(projector.state_dict(), str(tmp_path / "nullspace.safetensors"))
    fresh = NullSpaceProjector({"q": layer}, energy=0.98)
    fresh.load_state_dict(load_file(str(tmp_path / "nullspace.safetensors")))
    assert fresh.ranks() == {"q": 4} and torch.equal(fresh.bases["q"], projector.bases["q"])
    with pytest.raises(ValueError, match="basis.k"):
        fresh.load_state_dict({"basis.k": torch.zeros(16, 2)})
