"""Which verdicts transfer between model families (sortrl.analysis.transfer, CLAIMS.md's transfer section, the README
sentence) and the generalisation figure (sortrl.render.figures.plot_generalisation), on hand-made verdicts and on a
tiny real sweep of both families."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from sortrl.analysis import experiment
from sortrl.analysis.transfer import column, holds, lecture, tally, transfers
from sortrl.render import figures
from sortrl.render.claims_md import transfer_section, transfer_sentence
from sortrl.render.publish import write_report
from sortrl.study.grid import parse_grid
from sortrl.study.sweep import run_sweep


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        (["supported"], True),
        (["supported", "inconclusive", "no effect"], True),  # supported in part: a trend whose step is unclear
        (["supported", "contradicted"], False),  # mixed
        (["no effect", "inconclusive"], False),  # not supported
        (["contradicted"], False),
    ],
)
def test_a_claim_holds_on_a_family_when_supported_or_supported_in_part(verdicts, expected):
    assert holds(verdicts) is expected


def test_an_implementation_check_holds_when_every_check_does():
    assert holds(["holds", "holds"], identity=True)
    assert not holds(["holds", "not in every seed"], identity=True)
    with pytest.raises(ValueError, match="at least one test"):
        holds([], identity=True)
    with pytest.raises(ValueError, match="at least one test"):
        holds([])


@pytest.mark.parametrize(
    ("held", "expected"),
    [
        ({"linear": True, "transformer": True}, "holds on both"),
        ({"linear": True, "transformer": False}, "linear only"),
        ({"linear": False, "transformer": True}, "transformer only"),
        ({"linear": False, "transformer": False}, "neither"),
        ({"linear": True, "transformer": True, "gru": False}, "linear and transformer only"),
        ({"linear": True, "transformer": True, "gru": True}, "holds on all"),
    ],
)
def test_the_column_says_where_a_claim_holds(held, expected):
    assert column(held) == expected


def test_a_transfer_needs_two_families():
    with pytest.raises(ValueError, match="at least two families"):
        column({"linear": True})


def _test(claim_id, family, verdict, source="CS336 lecture 17", identity="", across="model"):
    claim = SimpleNamespace(
        id=claim_id,
        across=across,
        identity=identity,
        source=source,
        statement=f"{claim_id} holds",
        metric="final_score",
    )
    return SimpleNamespace(claim=claim, setting={across: family} if across else {}, verdict=verdict)


HAND = [
    _test("A", "linear", "supported"),  # a trend: linear supported in every test, the transformer in part
    _test("A", "linear", "supported"),
    _test("A", "transformer", "supported"),
    _test("A", "transformer", "inconclusive"),
    _test("B", "linear", "supported", source="Shao et al. 2024"),  # the transformer contradicts it
    _test("B", "transformer", "contradicted", source="Shao et al. 2024"),
    _test("C", "linear", "no effect"),  # only the transformer
    _test("C", "transformer", "supported"),
    _test("D", "linear", "holds", source="DAPO", identity="by construction"),  # a check failing on one family
    _test("D", "transformer", "not in every seed", source="DAPO", identity="by construction"),
    _test("E", "", "supported", across=None),  # tested once: not a transferred claim
]


def test_transfers_computed_per_family_from_hand_made_verdicts():
    found = {t.claim.id: t for t in transfers(HAND)}
    assert list(found) == ["A", "B", "C", "D"]
    assert found["A"].verdicts == {"linear": "supported", "transformer": "supported in part"}
    assert found["A"].holds_on == "holds on both"
    assert found["B"].verdicts == {"linear": "supported", "transformer": "contradicted"}
    assert found["B"].holds_on == "linear only"
    assert found["C"].holds_on == "transformer only"
    assert found["D"].verdicts == {"linear": "holds", "transformer": "not in every seed"}
    assert found["D"].holds_on == "linear only"
    assert tally(list(found.values())) == {"holds on both": 1, "linear only": 2, "transformer only": 1}
    assert [t.claim.id for t in lecture(list(found.values()))] == ["A", "C"]
    lectures_check = (
        _test("F", "linear", "holds", identity="the reference"),
        _test("F", "transformer", "holds", identity="x"),
    )
    assert [t.claim.id for t in lecture(transfers([*HAND, *lectures_check]))] == ["A", "C"]  # a check is no conclusion


def test_the_transfer_section_and_sentence_count_from_the_column():
    assert transfer_sentence(HAND) == (
        "Of the lecture's 2 conclusions tested on both families (A, C), 1 holds on both; of all 3 transferred "
        "claims: 1 holds on both, 1 linear only, 1 transformer only. Implementation checks on both families (D; not "
        "evidence): 1 linear only."
    )
    lines = transfer_section(HAND)
    assert lines[0] == "## Transfer to a second model family"
    assert "| claim | statement | linear | transformer | holds on |" in lines
    assert "| [B](#claim-b) | B holds | supported | contradicted | **linear only** |" in lines
    assert transfer_section([HAND[-1]]) == [] and transfer_sentence([HAND[-1]]) == ""
    entropy = SimpleNamespace(
        claim=SimpleNamespace(id="T0", across=None, identity="", metric="initial_entropy", margin=0.08),
        sides=(SimpleNamespace(label="transformer", mean=0.4249), SimpleNamespace(label="linear", mean=0.4151)),
        n=64,
        verdict="supported",
    )
    assert transfer_sentence([*HAND, entropy]).endswith(
        " Initial entropy per response token (first epoch, mean over 64 seeds): `linear` 0.42, `transformer` 0.42 "
        "nats (T0: supported within 0.08 nats)."
    )


TINY_TRANSFER = """
name = "tiny-transfer"
seeds = 3
figures = ["generalisation"]
baseline = { model = "linear", method = "sft", num_prompts = 4 }

[base]
task = "random"
vocab_size = 4
prompt_length = 2
prompts_per_epoch = 2
num_eval_prompts = 4
task_seed = 0
eval_every = 2
num_epochs = 4
num_steps_per_epoch = 1
num_responses = 3
d_model = 8

[grid]
model = ["linear", "transformer"]
method = [{ name = "sft", loss_mode = "sft" }, { name = "rl", deltas_mode = "centered_rewards" }]
num_prompts = [4, 8]

[[claim]]
id = "X1"
statement = "sft beats policy gradient on held-out prompts"
subject = "sft"
source = "CS336 lecture 17"
metric = "final_eval/greedy_accuracy"
new = { method = "sft" }
old = { method = "rl" }
predicts = "higher"
across = "model"
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """`TINY_TRANSFER` swept (both families, 24 runs of 4 epochs) and reported: its results folder."""
    root = tmp_path_factory.mktemp("transfer")
    run_sweep(parse_grid(TINY_TRANSFER), root, n_jobs=1)
    write_report(root)
    return root


def test_the_generalisation_figure_draws_each_family_and_method_against_training_prompts(tiny):
    exp = experiment.load_experiment(tiny, "tiny-transfer", figures.curve_metrics())
    fig = figures.plot_generalisation(exp)
    train_ax, held_ax = fig.axes[:2]
    chance = 1 / 4**2  # a uniformly random response of 2 tokens from 4 is the sorted prompt
    for ax, column_name in ((train_ax, "final_greedy_accuracy"), (held_ax, "final_eval/greedy_accuracy")):
        drawn = [line for line in ax.get_lines() if line.get_linestyle() != ":"]
        assert len(drawn) == 4  # linear / sft, linear / rl, transformer / sft, transformer / rl
        (dotted,) = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
        assert dotted.get_ydata()[0] == pytest.approx(chance)
        for line in drawn:
            assert list(line.get_xdata()) == [4, 8]
        # the first line is linear / sft: its means are the runs' held-out (or training) accuracies by hand
        final = exp.final.set_index("configuration")
        by_hand = [final.loc[f"linear / sft / num_prompts={n}", column_name].mean() for n in (4, 8)]
        np.testing.assert_allclose(drawn[0].get_ydata(), by_hand)
    assert (tiny / "figures" / "tiny-transfer_generalisation.png").is_file()


def test_a_grid_without_held_out_prompts_or_one_size_draws_no_generalisation_figure(tiny):
    exp = experiment.load_experiment(tiny, "tiny-transfer", figures.curve_metrics())
    one_size = exp.final[exp.final["configuration"].str.endswith("num_prompts=4")]
    assert figures.plot_generalisation(dataclasses.replace(exp, final=one_size)) is None
    no_eval = exp.final.drop(columns=["final_eval/greedy_accuracy"])
    assert figures.plot_generalisation(dataclasses.replace(exp, final=no_eval)) is None


def test_claims_md_has_the_transfer_column_for_a_claim_tested_across_models(tiny):
    text = (tiny / "CLAIMS.md").read_text()
    assert "## Transfer to a second model family" in text
    assert "| claim | statement | linear | transformer | holds on |" in text
    section = text.split("## Transfer to a second model family")[1].split("\n### ")[0]
    (row,) = [line for line in section.splitlines() if line.startswith("| [X1](#claim-x1) | sft beats")]
    assert row.endswith(("**holds on both** |", "**linear only** |", "**transformer only** |", "**neither** |"))
