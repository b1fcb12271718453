"""Action/state normalisation: the released GEM-VLA's min-max (range floored at 1e-3, raw states) by hand."""

import pytest
import torch

from gem_models.action_normalization import ActionNormalizer

# GEM-VLA/train/dataset.py: (a - min) / np.maximum(max - min, 1e-3) * 2 - 1; states are fed raw.
STATS = {
    "action": {"min": [0.0, -1.0, 5.0, 0.0], "max": [2.0, 1.0, 5.0, 0.0005],
               "mean": [1.0, 0.0, 5.0, 0.0], "std": [1.0, 1.0, 0.0, 0.0]},
    "state": {"min": [-3.0, 10.0], "max": [3.0, 20.0], "mean": [0.0, 15.0], "std": [2.0, 4.0]},
}


def test_min_max_is_the_release_formula_with_its_range_floor():
    n = ActionNormalizer(4, 2, "min_max")
    n.set_from_statistics(STATS)
    a = torch.tensor([[1.0, 0.5, 5.0, 0.0005], [0.0, -1.0, 5.0, 0.0], [2.0, 1.0, 5.0, 0.00025]])
    # by hand: (1-0)/2*2-1 = 0; (0.5+1)/2*2-1 = 0.5; constant dim (5-5)/1e-3*2-1 = -1; 0.0005/1e-3*2-1 = 0
    expected = torch.tensor([[0.0, 0.5, -1.0, 0.0], [-1.0, -1.0, -1.0, -1.0], [1.0, 1.0, -1.0, -0.5]])
    assert torch.allclose(n.normalize_actions(a), expected, atol=1e-6)
    assert torch.allclose(n.unnormalize_actions(n.normalize_actions(a)), a, atol=1e-6)
    s = torch.tensor([[7.0, -2.0]])
    assert torch.equal(n.normalize_state(s), s)  # states raw


def test_min_max_from_data_matches_statistics():
    actions = torch.tensor([[0.0, 5.0], [4.0, 5.0]])
    n = ActionNormalizer(2, 1, "min_max")
    n.set_stats(actions[None], torch.tensor([[3.0], [9.0]]))
    assert n.action_loc.tolist() == [0.0, 5.0]
    assert n.action_scale.tolist() == pytest.approx([2.0, 0.0005])
    assert n.state_loc.tolist() == [0.0] and n.state_scale.tolist() == [1.0]


def test_mean_std_normalizes_actions_and_states():
    n = ActionNormalizer(4, 2, "mean_std")
    n.set_from_statistics(STATS)
    assert n.action_scale.tolist() == [1.0, 1.0, 1.0, 1.0]  # zero std -> 1
    assert torch.allclose(n.normalize_state(torch.tensor([[2.0, 23.0]])), torch.tensor([[1.0, 2.0]]))
