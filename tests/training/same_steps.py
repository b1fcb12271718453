"""Checks that a stage trained one way (packed, compiled) took the steps a reference run took."""

import pytest
import torch


def assert_same_steps(result: dict, reference, saved: torch.nn.Module, trained: torch.nn.Module,
                      base: torch.nn.Module) -> None:
    """`result` (train_stage's summary) and `saved` (its checkpoint, loaded) against `reference` (the trainer's
    TrainResult) and `trained` (its model, started from `base`): the same steps, losses and trained weights, and
    the weights did move."""
    assert reference.step == result["step"]
    assert set(result["losses"]) == set(reference.losses) >= {"lm", "depth", "loss"}
    for part, value in reference.losses.items():
        assert result["losses"][part] == pytest.approx(value, rel=1e-5), part
    saved_params = dict(saved.named_parameters())
    assert saved_params.keys() == dict(trained.named_parameters()).keys()
    moved = 0
    for name, p in trained.named_parameters():
        if p.requires_grad:
            moved += not torch.equal(p, base.get_parameter(name))
            # AdamW's first steps move a weight by ~lr (1e-3) whatever its gradient's size, so a near-zero
            # gradient's rounding shows as a few 1e-6; a step that went wrong differs by ~lr
            torch.testing.assert_close(saved_params[name], p.detach(), rtol=1e-4, atol=2e-5,
                                       msg=lambda m, n=name: f"{n}: {m}")
    assert moved > 0
