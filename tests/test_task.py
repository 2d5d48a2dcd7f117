"""Prompt sets beyond the lecture's three: random tasks, mixed lengths, minibatches, held-out evaluation."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from sortrl import ConfigError, RunConfig, train
from sortrl.engine import metrics
from sortrl.engine.model import forward, init_params
from sortrl.engine.task import (
    PAD,
    TASKS,
    best_mean_reward,
    chance_mean_reward,
    is_sorted_exactly,
    reward_bounds,
    sorted_prompts,
)

RANDOM = dict(task="random", vocab_size=6, prompt_length=4, num_prompts=12, num_eval_prompts=8)
TRAINING_COLUMNS = ["mean_reward", "reward_std", "entropy", "loss", "greedy_accuracy", "response_length"]


def rows(prompts: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(x for x in row if x != PAD) for row in prompts.tolist()]


def test_lecture_task_is_the_prompts_field_without_held_out_prompts():
    prompts = TASKS["lecture"](RunConfig())
    assert prompts.train.tolist() == [[1, 0, 2], [3, 2, 4], [1, 2, 3]] and prompts.eval.shape == (0, 3)


def test_random_prompts_are_deterministic_given_the_task_seed_only():
    cfg = RunConfig(**RANDOM)
    first, again = TASKS["random"](cfg), TASKS["random"](dataclasses.replace(cfg, seed=7))  # run seed: irrelevant
    assert torch.equal(first.train, again.train) and torch.equal(first.eval, again.eval)
    other = TASKS["random"](dataclasses.replace(cfg, task_seed=1))
    assert not torch.equal(first.train, other.train)


def test_held_out_prompts_are_disjoint_from_training_prompts_and_unique():
    prompts = TASKS["random"](RunConfig(**{**RANDOM, "vocab_size": 3, "prompt_length": 3, "num_prompts": 15}))
    train_rows, eval_rows = rows(prompts.train), rows(prompts.eval)
    assert len(train_rows) == 15 and len(eval_rows) == 8
    assert len(set(train_rows)) == 15 and len(set(eval_rows)) == 8  # no exact duplicates
    assert not set(train_rows) & set(eval_rows)
    assert all(0 <= x < 3 for row in train_rows + eval_rows for x in row)


def test_training_prompts_do_not_depend_on_the_number_of_held_out_prompts():
    cfg = RunConfig(**{**RANDOM, "prompt_length": (3, 5)})
    with_eval, without = TASKS["random"](cfg), TASKS["random"](dataclasses.replace(cfg, num_eval_prompts=0))
    assert torch.equal(with_eval.train, without.train) and without.eval.shape[0] == 0


def test_without_repeats_no_prompt_repeats_a_number():
    prompts = TASKS["random"](RunConfig(**{**RANDOM, "allow_repeats": False}))
    assert all(len(set(row)) == len(row) == 4 for row in rows(torch.cat([prompts.train, prompts.eval])))


def test_mixed_lengths_split_evenly_and_pad_at_the_end():
    cfg = RunConfig(**{**RANDOM, "prompt_length": [3, 5], "num_prompts": 5, "num_eval_prompts": 3})
    assert cfg.prompt_length == (3, 5) and cfg.lengths == (3, 5) and cfg.response_length == 5
    prompts = TASKS["random"](cfg)
    assert prompts.train.shape == (5, 5) and prompts.eval.shape == (3, 5)
    assert sorted(len(r) for r in rows(prompts.train)) == [3, 3, 3, 5, 5]  # 5 = 3 + 2, the first length first
    assert sorted(len(r) for r in rows(prompts.eval)) == [3, 3, 5]
    short = prompts.train[(prompts.train == PAD).any(dim=1)]
    assert (short[:, 3:] == PAD).all() and (short[:, :3] != PAD).all()


def test_too_few_distinct_prompts_is_an_error_naming_the_field():
    cfg = RunConfig(task="random", vocab_size=2, prompt_length=2, num_prompts=3, num_eval_prompts=2)  # 4 exist
    with pytest.raises(ConfigError, match=r"^num_prompts: .* exceed the 4 distinct prompts"):
        TASKS["random"](cfg)
    with pytest.raises(ConfigError, match=r"^prompt_length: "):
        RunConfig(task="random", vocab_size=3, prompt_length=4, allow_repeats=False)


def test_sorted_prompts_keep_padding_last():
    prompts = torch.tensor([[3, 1, PAD], [2, 0, 1]])
    assert sorted_prompts(prompts).tolist() == [[1, 3, PAD], [0, 1, 2]]


def test_greedy_accuracy_of_a_hand_set_policy():
    """Logits whose argmax sorts prompts 0 and 2 exactly (and only the first two numbers of prompt 1)."""
    prompts = torch.tensor([[2, 0, 1], [4, 3, 2], [1, PAD, PAD], [3, 1, PAD]])
    answers = torch.tensor([[0, 1, 2], [2, 3, 0], [1, 4, 4], [3, 1, 0]])  # exact, wrong last, exact (pad free), wrong
    logits = torch.nn.functional.one_hot(answers, 5).float()[None]  # [run batch pos vocab], argmax = answers
    assert is_sorted_exactly(prompts, logits.argmax(-1)).tolist() == [[True, False, True, False]]
    cfg = SimpleNamespace(c0=SimpleNamespace(lengths=(1, 2, 3)))
    got = metrics.greedy(cfg.c0.lengths, prompts, logits, "eval/")
    assert got["eval/greedy_accuracy"].tolist() == [0.5]
    # per length: length 1 -> 1 of 1 sorted, length 2 -> 0 of 1, length 3 -> 1 of 2
    assert [got[f"eval/greedy_accuracy/len={n}"].item() for n in (1, 2, 3)] == [1.0, 0.0, 0.5]


def test_padded_positions_contribute_nothing_to_the_encoding():
    """A short prompt in a 4-position model is encoded exactly as from its own positions (padding ignored)."""
    params = init_params([torch.Generator().manual_seed(0)], 6, 10, 4, 4)
    prompts = torch.tensor([[2, 5, PAD, PAD]])
    logits = forward(params, prompts, padded=True)
    emb, enc, dec = params["embedding"][0], params["encode"][0], params["decode"][0]
    encoded = emb[2] @ enc[0] + emb[5] @ enc[1]  # only the two real positions
    expected = torch.stack([(encoded @ dec[p]) @ emb.T for p in range(4)])
    torch.testing.assert_close(logits[0, 0], expected, rtol=1e-5, atol=1e-6)
    other_pad = forward(params, torch.tensor([[2, 5, PAD, PAD]]), padded=True)
    assert torch.equal(logits, other_pad)


def test_evaluation_does_not_change_the_training_trajectory():
    cfg = RunConfig(**RANDOM, num_epochs=6, num_steps_per_epoch=2, deltas_mode="centered_rewards", seed=3)
    every = train([cfg])
    rarely = train([dataclasses.replace(cfg, eval_every=100)])
    never = train([dataclasses.replace(cfg, num_eval_prompts=0)])
    for other in (rarely, never):
        pd.testing.assert_frame_equal(every[TRAINING_COLUMNS], other[TRAINING_COLUMNS], check_exact=True)
    assert every["eval/greedy_accuracy"].notna().all() and "eval/greedy_accuracy" not in never
    assert rarely["eval/mean_reward"].notna().tolist() == [False] * 5 + [True]  # only after the last epoch


def test_every_fifth_epoch_and_the_last_are_evaluated():
    cfg = RunConfig(**RANDOM, num_epochs=12, num_steps_per_epoch=1, eval_every=5)
    table = train([cfg])
    assert table.loc[table["eval/mean_reward"].notna(), "epoch"].tolist() == [4, 9, 11]


def test_minibatches_come_from_the_runs_generator_and_keep_batch_invariance():
    cfg = RunConfig(**RANDOM, num_epochs=5, num_steps_per_epoch=2, prompts_per_epoch=3, seed=4)
    alone = train([cfg])
    mates = [dataclasses.replace(cfg, seed=s, learning_rate=0.01) for s in range(10, 15)]
    inside = train(mates[:2] + [cfg] + mates[2:])
    pd.testing.assert_frame_equal(alone, inside[inside.run_id == cfg.run_id].reset_index(drop=True), check_exact=True)
    # the run's generator first draws the minibatch, then the responses: a different seed draws other prompts
    full = train([dataclasses.replace(cfg, prompts_per_epoch=None)])
    assert not alone["mean_reward"].equals(full["mean_reward"])


def test_mixed_lengths_train_and_report_per_length_accuracy():
    cfg = RunConfig(**{**RANDOM, "prompt_length": (3, 4)}, num_epochs=3, num_steps_per_epoch=1, eos=True)
    table = train([cfg])
    for name in ("greedy_accuracy/len=3", "greedy_accuracy/len=4", "eval/greedy_accuracy/len=3"):
        assert table[name].between(0, 1).all()
    # no response is longer than its prompt: lengths are masked per prompt
    assert (table.response_length <= 3.5 + 1e-9).all()


def test_chance_score_of_the_uniform_policy_exactly_for_a_three_number_prompt():
    import itertools

    from sortrl.engine.task import REWARDS, chance_scores

    prompt = (1, 0, 2)

    def lecture_reward(response):  # CS336 lecture 17 sort_inclusion_ordering_reward, in plain Python
        return sum(x in response for x in prompt) + sum(a <= b for a, b in zip(response, response[1:]))

    responses = list(itertools.product(range(5), repeat=3))  # the 125 equally likely responses
    expected = sum(lecture_reward(r) for r in responses) / 125
    got = chance_scores(torch.tensor([prompt]), REWARDS["inclusion_ordering"], 5, None)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    assert chance_scores(torch.tensor([prompt]), REWARDS["exact_match"], 5, None).item() == pytest.approx(1 / 125)
    assert chance_scores(torch.tensor([prompt]), REWARDS["distance"], 5, None).item() == pytest.approx(3 / 5)
    # with EOS (token 5) a response ends at its first EOS: only 1 of the 216 responses is exactly sorted
    assert chance_scores(torch.tensor([prompt]), REWARDS["exact_match"], 6, 5).item() == pytest.approx(1 / 216)


def test_chance_mean_reward_of_the_held_out_prompts_by_hand():
    """Prompts of lengths 2 and 3 over 4 numbers: 2 + 1 training prompts, 1 held-out prompt of length 2.

    Under `distance`, each position matches sorted(prompt) with probability 1/4, so a length-L prompt's
    chance is L/4: training (2/4 + 2/4 + 3/4) / 3 = 7/12, held-out 2/4. Under `exact_match`: 1/4^L.
    """
    from sortrl.engine.config import make_config
    from sortrl.engine.task import chance_mean_reward

    fields = {"task": "random", "prompt_length": (2, 3), "vocab_size": 4, "num_prompts": 3, "num_eval_prompts": 1}
    cfg = make_config(reward="distance", **fields)
    assert chance_mean_reward(cfg) == pytest.approx(7 / 12)
    assert chance_mean_reward(cfg, "eval") == pytest.approx(2 / 4)
    exact = make_config(reward="exact_match", **fields)
    assert chance_mean_reward(exact) == pytest.approx((1 / 16 + 1 / 16 + 1 / 64) / 3)
    assert chance_mean_reward(exact, "eval") == pytest.approx(1 / 16)
    assert math.isnan(chance_mean_reward(make_config(), "eval"))  # the lecture's prompts: none held out
    with pytest.raises(ValueError, match="split: 'test' is not one of 'train', 'eval'"):
        chance_mean_reward(cfg, "test")


def test_chance_score_is_sampled_when_enumeration_is_too_big():
    from sortrl.engine.task import REWARDS, chance_scores

    prompts = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])  # 10^8 responses: sampled
    got = chance_scores(prompts, REWARDS["distance"], 10, None).item()
    assert got == pytest.approx(8 / 10, abs=0.01)  # each position matches sorted(prompt) with probability 1/10


def test_chance_scores_of_a_prompt_set_are_each_prompts_own(monkeypatch):
    """Prompts of a set are scored together (a few per reward call, grouped by their padding): each gets exactly the
    score it gets alone, for mixed lengths (padded prompts), sampled responses and EOS, whatever the chunk size."""
    from sortrl.engine import task
    from sortrl.engine.task import PAD, REWARDS, chance_scores

    prompts = torch.tensor(
        [[3, 1, 4, 1, 5, 9], [2, 6, PAD, PAD, PAD, PAD], [5, 3, 5, PAD, PAD, PAD], [8, 9, 7, 9, 3, 2]]
    )
    for eos_id in (None, 10):
        for name, reward in REWARDS.items():
            alone = torch.stack([chance_scores(p[None], reward, 11, eos_id)[0] for p in prompts])
            together = chance_scores(prompts, reward, 11, eos_id)
            assert torch.equal(together, alone), (name, eos_id)
    before = chance_scores(prompts, REWARDS["inclusion_ordering"], 11, 10)
    monkeypatch.setattr(task, "CHANCE_CHUNK_BYTES", 1)  # one prompt per call
    assert torch.equal(chance_scores(prompts, REWARDS["inclusion_ordering"], 11, 10), before)


def test_reward_bounds_are_the_best_and_chance_rewards_cached_by_what_chance_depends_on():
    """Configurations that share the chance fields share the cached chances; any chance field changes them."""
    configs = [
        RunConfig(),
        RunConfig(learning_rate=0.1),  # not a chance field: the cached chances serve it
        RunConfig(reward="exact_match"),
        RunConfig(eos=True),
        RunConfig(task="random", num_prompts=6, num_eval_prompts=3, prompts_per_epoch=2),
    ]
    for cfg in configs:
        want = (best_mean_reward(cfg), chance_mean_reward(cfg), chance_mean_reward(cfg, "eval"))
        assert reward_bounds(cfg) == pytest.approx(want, nan_ok=True)
    chances = {reward_bounds(cfg).chance for cfg in configs}
    assert len(chances) == 4 and reward_bounds(configs[0]) == reward_bounds(configs[1])
