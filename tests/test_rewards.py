"""Reward functions and response masks (sortrl.engine.task), checked on hand-computed cases.

Rewards are vectorised: prompts [batch pos], responses [run batch trial pos],
content mask [run batch trial pos] -> rewards [run batch trial].
"""

from __future__ import annotations

import pytest
import torch

from sortrl.engine.registry import ConfigError
from sortrl.engine.task import (
    REWARDS,
    distance_reward,
    eos_masks,
    exact_match_reward,
    inclusion_ordering_reward,
    is_sorted_exactly,
)

LECTURE_PROMPT = [3, 1, 0, 2]
# The lecture's own examples for prompt [3, 1, 0, 2] (sorted: [0, 1, 2, 3]):
#   [0,1,2,3]: inclusion 4 (all of 3,1,0,2 present) + ordering 3 (0<=1, 1<=2, 2<=3) = 7; distance 4 (all positions)
#   [7,2,2,5]: inclusion 1 (only 2)                 + ordering 2 (2<=2, 2<=5)       = 3; distance 1 (pos 2: 2 == 2)
#   [0,3,1,2]: inclusion 4                          + ordering 2 (0<=3, 1<=2)       = 6; distance 1 (pos 0: 0 == 0)
LECTURE_EXAMPLES = [([0, 1, 2, 3], 7, 4), ([7, 2, 2, 5], 3, 1), ([0, 3, 1, 2], 6, 1)]


def _one_group(prompt, responses):
    """prompts [1 pos], responses [1 1 trial pos], all-content mask."""
    r = torch.tensor(responses)[None, None]
    return torch.tensor([prompt]), r, torch.ones_like(r, dtype=torch.bool)


@pytest.mark.parametrize(("response", "inclusion_ordering", "distance"), LECTURE_EXAMPLES)
def test_lecture_examples_one_by_one(response, inclusion_ordering, distance):
    prompts, responses, content = _one_group(LECTURE_PROMPT, [response])
    assert inclusion_ordering_reward(prompts, responses, content).tolist() == [[[float(inclusion_ordering)]]]
    assert distance_reward(prompts, responses, content).tolist() == [[[float(distance)]]]


def test_lecture_examples_vectorised_over_trials():
    prompts, responses, content = _one_group(LECTURE_PROMPT, [e[0] for e in LECTURE_EXAMPLES])
    out = inclusion_ordering_reward(prompts, responses, content)
    assert out.shape == (1, 1, 3)
    assert out.dtype == torch.float32
    assert out.tolist() == [[[7.0, 3.0, 6.0]]]
    assert distance_reward(prompts, responses, content).tolist() == [[[4.0, 1.0, 1.0]]]


def test_rewards_do_not_mix_runs_or_prompts():
    # run axis 2, batch axis 2 (two different prompts), trial axis 2
    prompts = torch.tensor([[3, 1, 0, 2], [2, 2, 1, 0]])
    responses = torch.tensor(
        [
            [[[0, 1, 2, 3], [7, 2, 2, 5]], [[0, 1, 2, 2], [2, 2, 1, 0]]],
            [[[0, 3, 1, 2], [3, 3, 3, 3]], [[9, 9, 9, 9], [0, 0, 0, 0]]],
        ]
    )
    content = torch.ones_like(responses, dtype=torch.bool)
    # prompt [2,2,1,0], sorted [0,1,2,2]:
    #   [0,1,2,2]: inclusion 4 (2, 2, 1, 0 all present; the prompt's repeated 2 counts twice) + ordering 3 = 7; distance 4
    #   [2,2,1,0]: inclusion 4 + ordering 1 (2<=2) = 5; distance 0 (2/0, 2/1, 1/2, 0/2 all differ)
    #   [9,9,9,9]: inclusion 0 + ordering 3 = 3; distance 0
    #   [0,0,0,0]: inclusion 1 (only 0) + ordering 3 = 4; distance 1 (pos 0)
    # prompt [3,1,0,2]: [3,3,3,3]: inclusion 1 (3) + ordering 3 = 4; distance 1 (pos 3: 3 == 3)
    assert inclusion_ordering_reward(prompts, responses, content).tolist() == [
        [[7.0, 3.0], [7.0, 5.0]],
        [[6.0, 4.0], [3.0, 4.0]],
    ]
    assert distance_reward(prompts, responses, content).tolist() == [
        [[4.0, 1.0], [4.0, 0.0]],
        [[1.0, 1.0], [0.0, 1.0]],
    ]


def test_exact_match_reward():
    prompts, responses, content = _one_group(LECTURE_PROMPT, [[0, 1, 2, 3], [0, 1, 3, 2], [7, 2, 2, 5], [0, 1, 2, 2]])
    # only the first response is sorted(prompt) = [0, 1, 2, 3]
    assert exact_match_reward(prompts, responses, content).tolist() == [[[1.0, 0.0, 0.0, 0.0]]]
    assert REWARDS["exact_match"] is exact_match_reward


def test_reward_registry_and_unknown_reward_lists_choices():
    assert set(REWARDS) >= {"inclusion_ordering", "distance", "exact_match"}
    from sortrl.engine.config import RunConfig

    with pytest.raises(ConfigError, match=r"reward.*'sorted'.*inclusion_ordering.*distance.*exact_match"):
        RunConfig(reward="sorted")


# --- EOS -------------------------------------------------------------------
EOS = 5  # with vocab 5 (numbers 0..4) the EOS id is 5


def test_eos_masks_hand_examples():
    responses = torch.tensor([[[[1, EOS, 2], [EOS, EOS, 1], [1, 2, 3], [1, 2, EOS]]]])
    content, action = eos_masks(responses, EOS)
    # content: tokens before the first EOS; action: content + that first EOS (later EOS are not actions)
    assert content.tolist() == [
        [[[True, False, False], [False, False, False], [True, True, True], [True, True, False]]]
    ]
    assert action.tolist() == [[[[True, True, False], [True, False, False], [True, True, True], [True, True, True]]]]
    # no EOS token configured: everything is content and action, whatever the ids
    content, action = eos_masks(responses, None)
    assert bool(content.all()) and bool(action.all())


def test_reward_sees_only_content():
    # prompt [2, 0, 1] (vocab 3, EOS id 3), sorted [0, 1, 2]
    prompts = torch.tensor([[2, 0, 1]])
    responses = torch.tensor([[[[0, 0, 3], [0, 1, 2], [3, 1, 2]]]])
    content, _ = eos_masks(responses, 3)
    # [0,0,EOS]: inclusion 1 (0) + ordering 1 (0<=0; 0<=EOS is not between two content tokens) = 2
    # [0,1,2]:   inclusion 3 + ordering 2 = 5 (no EOS, full length)
    # [EOS,1,2]: empty content: 0 (the 1 and 2 after the EOS are not seen)
    assert inclusion_ordering_reward(prompts, responses, content).tolist() == [[[2.0, 5.0, 0.0]]]
    # distance to [0,1,2]: [0,0,-] 1 (pos 0); [0,1,2] 3; [-,-,-] 0
    assert distance_reward(prompts, responses, content).tolist() == [[[1.0, 3.0, 0.0]]]
    assert exact_match_reward(prompts, responses, content).tolist() == [[[0.0, 1.0, 0.0]]]
    # were the mask ignored: [0,0,3] would get 1 + 2 = 3 (0 <= 3 counted), [3,1,2] 2 + 1 = 3 and distance 2
    all_seen = torch.ones_like(content)
    assert inclusion_ordering_reward(prompts, responses, all_seen).tolist() == [[[3.0, 5.0, 3.0]]]
    assert distance_reward(prompts, responses, all_seen).tolist() == [[[1.0, 3.0, 2.0]]]


def test_truncated_sorted_prefix_is_not_an_exact_match():
    # [0, 1, EOS] is a sorted prefix of sorted([2,0,1]) = [0,1,2] but stops early: exact match 0, distance 2
    prompts = torch.tensor([[2, 0, 1]])
    responses = torch.tensor([[[[0, 1, 3]]]])
    content, _ = eos_masks(responses, 3)
    assert exact_match_reward(prompts, responses, content).item() == 0.0
    assert distance_reward(prompts, responses, content).item() == 2.0


def test_inclusion_ordering_loophole_is_measurable_with_eos():
    """Repeating the smallest number then stopping scores ordering points; length and exact match expose it."""
    prompts = torch.tensor([[2, 0, 1]])
    # honest [0,1,2]; loophole [0,0,EOS]; full-length loophole [0,0,0] (what the lecture's reward can't tell apart)
    responses = torch.tensor([[[[0, 1, 2], [0, 0, 3], [0, 0, 0]]]])
    content, _ = eos_masks(responses, 3)
    reward = inclusion_ordering_reward(prompts, responses, content)
    # honest 3 + 2 = 5; [0,0,EOS] 1 + 1 = 2; [0,0,0] 1 + 2 = 3
    assert reward.tolist() == [[[5.0, 2.0, 3.0]]]
    assert content.sum(dim=-1).tolist() == [[[3, 2, 3]]]  # response_length exposes the early stop
    assert exact_match_reward(prompts, responses, content).tolist() == [[[1.0, 0.0, 0.0]]]
    # the loopholes still collect points (> 0) even though neither is a sort
    assert reward[0, 0, 1].item() > 0 and reward[0, 0, 2].item() > 0


def test_is_sorted_exactly():
    prompts = torch.tensor([[2, 0, 1], [3, 3, 1]])
    greedy = torch.tensor([[[0, 1, 2], [1, 3, 3]], [[0, 2, 1], [3, 3, 1]]])  # [run batch pos]
    assert is_sorted_exactly(prompts, greedy).tolist() == [[True, True], [False, False]]


def test_partial_credit_shares_of_the_lecture_rewards_by_hand():
    """How much a reward credits wrong answers (claim L4b): the uniform random policy's share of the best reward on
    the lecture's prompts (3 numbers of 5 values). Distance: each position is right with probability 1/5, so 3 x 1/5 =
    0.6 of 3 (20%); exact match: (1/5)^3 = 0.008 of 1; inclusion_ordering: 2.664 of 5 (53%, by enumeration)."""
    from sortrl.engine.config import RunConfig
    from sortrl.engine.task import reward_bounds

    share = {}
    for name in ("inclusion_ordering", "distance", "exact_match"):
        bounds = reward_bounds(RunConfig(reward=name))
        share[name] = bounds.chance / bounds.best
    assert share == pytest.approx({"inclusion_ordering": 2.664 / 5, "distance": 0.2, "exact_match": 0.008}, abs=1e-6)
    assert share["exact_match"] < share["distance"] < share["inclusion_ordering"]
