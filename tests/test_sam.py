from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from study.sam import SAM, disable_running_stats, enable_running_stats

torch.set_num_threads(1)

RHO, LR = 0.05, 0.1


def quadratic(seed: int = 0, dim: int = 5):
    """f(w) = 0.5 w^T A w with A symmetric positive definite; grad f = A w."""
    generator = torch.Generator().manual_seed(seed)
    m = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    a = m @ m.T + dim * torch.eye(dim, dtype=torch.float64)
    w0 = torch.randn(dim, generator=generator, dtype=torch.float64)
    return a, w0


def loss_of(a, w):
    return 0.5 * w @ a @ w


def test_first_and_second_step_match_closed_form():
    a, w0 = quadratic()
    w = nn.Parameter(w0.clone())
    optimizer = SAM([w], torch.optim.SGD, rho=RHO, lr=LR)
    loss_of(a, w).backward()
    g = a @ w0
    torch.testing.assert_close(w.grad, g)

    optimizer.first_step(zero_grad=True)
    e = RHO * g / torch.linalg.vector_norm(g)
    torch.testing.assert_close(w.detach(), w0 + e)
    assert w.grad is None

    loss_of(a, w).backward()
    torch.testing.assert_close(w.grad, a @ (w0 + e))  # the gradient second_step uses
    optimizer.second_step(zero_grad=True)
    torch.testing.assert_close(w.detach(), w0 - LR * a @ (w0 + e))
    # differs from a plain SGD step, which would land on w0 - LR * g
    assert torch.linalg.vector_norm(w.detach() - (w0 - LR * g)) > 1e-3


def test_step_with_closure_equals_manual_steps_and_returns_loss_at_w():
    a, w0 = quadratic(seed=1)
    w = nn.Parameter(w0.clone())
    optimizer = SAM([w], torch.optim.SGD, rho=RHO, lr=LR)

    def closure():
        loss = loss_of(a, w)
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    torch.testing.assert_close(loss.detach(), loss_of(a, w0))
    e = RHO * (a @ w0) / torch.linalg.vector_norm(a @ w0)
    torch.testing.assert_close(w.detach(), w0 - LR * a @ (w0 + e))
    with pytest.raises(ValueError, match="closure"):
        optimizer.step()


def test_adaptive_perturbation_scales_by_weight_magnitude():
    a, w0 = quadratic(seed=2)
    w = nn.Parameter(w0.clone())
    optimizer = SAM([w], torch.optim.SGD, rho=RHO, adaptive=True, lr=LR)
    loss_of(a, w).backward()
    optimizer.first_step()
    g = a @ w0
    e = RHO * w0.square() * g / torch.linalg.vector_norm(w0.abs() * g)
    torch.testing.assert_close(w.detach(), w0 + e)


def test_perturbation_norm_spans_all_groups_and_skips_parameters_without_gradients():
    a, w0 = quadratic(seed=3, dim=4)
    first, second = nn.Parameter(w0[:2].clone()), nn.Parameter(w0[2:].clone())
    unused = nn.Parameter(torch.ones(3, dtype=torch.float64))
    optimizer = SAM([{"params": [first]}, {"params": [second, unused]}], torch.optim.SGD, rho=RHO, lr=LR)
    loss_of(a, torch.cat([first, second])).backward()
    optimizer.first_step()
    g = a @ w0
    e = RHO * g / torch.linalg.vector_norm(g)  # one norm over both groups
    torch.testing.assert_close(torch.cat([first, second]).detach(), w0 + e)
    assert torch.equal(unused.detach(), torch.ones(3, dtype=torch.float64))
    optimizer.second_step()
    assert torch.equal(unused.detach(), torch.ones(3, dtype=torch.float64))


def test_adamw_base_optimizer_shares_param_groups_and_state_dict_round_trips():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = SAM(model.parameters(), torch.optim.AdamW, rho=RHO, lr=3e-4, weight_decay=1e-4)
    assert optimizer.param_groups is optimizer.base_optimizer.param_groups
    assert optimizer.param_groups[0]["lr"] == 3e-4 and optimizer.param_groups[0]["rho"] == RHO
    x, y = torch.randn(8, 4), torch.randn(8, 1)

    def closure():
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    saved_model = {k: v.clone() for k, v in model.state_dict().items()}
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    assert "exp_avg" in saved_optimizer["state"][0]  # AdamW moments are what gets saved
    optimizer.step(closure)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    model.load_state_dict(saved_model)
    resumed = SAM(model.parameters(), torch.optim.AdamW, rho=RHO, lr=3e-4, weight_decay=1e-4)
    resumed.load_state_dict(saved_optimizer)
    assert resumed.param_groups is resumed.base_optimizer.param_groups
    resumed.step(closure)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)


def test_learning_rate_scheduler_drives_the_base_optimizer():
    w = nn.Parameter(torch.ones(2))
    optimizer = SAM([w], torch.optim.SGD, lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    optimizer.step(lambda: w.sum().backward())
    scheduler.step()
    assert optimizer.base_optimizer.param_groups[0]["lr"] == 0.5


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        ({"base_optimizer_cls": "adamw"}, TypeError, "base_optimizer_cls"),
        ({"rho": -0.1}, ValueError, "rho"),
        ({"adaptive": 1}, TypeError, "adaptive"),
    ],
)
def test_argument_validation(kwargs, error, message):
    arguments = {"base_optimizer_cls": torch.optim.SGD, "lr": 0.1, **kwargs}
    with pytest.raises(error, match=message):
        SAM([nn.Parameter(torch.ones(1))], **arguments)


def test_first_step_without_gradients_is_an_error():
    optimizer = SAM([nn.Parameter(torch.ones(1))], torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="backward"):
        optimizer.first_step()


def test_running_stats_helpers_freeze_batchnorm_buffers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 3, 3), nn.BatchNorm1d(3), nn.ReLU()).train()
    x = torch.randn(4, 1, 20)
    batch_norm = model[1]
    before = {k: v.clone() for k, v in batch_norm.state_dict().items()}
    reference = model(x)  # updates the buffers once

    for key, value in batch_norm.state_dict().items():
        before[key + "_after_one"] = value.clone()
    disable_running_stats(model)
    frozen_output = model(x)
    torch.testing.assert_close(frozen_output, reference)  # still normalised with the batch statistics
    for key, value in batch_norm.state_dict().items():
        assert torch.equal(value, before[key + "_after_one"]), key
    disable_running_stats(model)  # idempotent: must not overwrite the saved setting
    enable_running_stats(model)
    assert batch_norm.track_running_stats
    model(x)
    assert batch_norm.num_batches_tracked.item() == 2
    assert not torch.equal(batch_norm.running_mean, before["running_mean_after_one"])
    with pytest.raises(TypeError, match="model"):
        disable_running_stats("model")


def test_sam_step_updates_batchnorm_statistics_once():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 3, 3), nn.BatchNorm1d(3), nn.Flatten(), nn.LazyLinear(1)).train()
    x, y = torch.randn(4, 1, 10), torch.randn(4, 1)
    model(x)  # materialise the lazy layer
    optimizer = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    running_mean = model[1].running_mean.clone()
    momentum = model[1].momentum
    # what one forward pass at the current weights does to the running mean
    with torch.no_grad():
        batch_mean = model[0](x).mean(dim=(0, 2))
    expected = (1 - momentum) * running_mean + momentum * batch_mean

    calls = []

    def closure():
        if calls:
            disable_running_stats(model)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        enable_running_stats(model)
        calls.append(loss)
        return loss

    optimizer.step(closure)
    assert len(calls) == 2
    torch.testing.assert_close(model[1].running_mean, expected)
    assert model[1].num_batches_tracked.item() == 2  # materialising call + first SAM pass
