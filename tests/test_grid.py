"""Grid files: expansion into configurations and runs (in one place), one value normalisation, baselines, claims."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from sortrl.engine.config import make_config
from sortrl.engine.registry import ConfigError
from sortrl.study.grid import MAX_RUNS, check_claim_ids, normal, parse_grid, value_label

GRID = """
name = "g"
seeds = [3, 1]
baseline = { deltas_mode = "rewards", kl_penalty = 0 }
[base]
num_epochs = 2
[grid]
deltas_mode = ["rewards", "centered_rewards"]
kl_penalty = [0.0, 0.01]
loss_mode = ["naive"]
"""


def test_configurations_cross_the_axes_in_file_order():
    grid = parse_grid(GRID)
    configurations = grid.configurations()
    assert [c.label for c in configurations] == [
        "rewards / kl=0 / naive",
        "rewards / kl=0.01 / naive",
        "centered_rewards / kl=0 / naive",
        "centered_rewards / kl=0.01 / naive",
    ]
    second = configurations[1]
    assert second.values == {"deltas_mode": "rewards", "kl_penalty": 0.01, "loss_mode": "naive"}
    assert second.labels == {"deltas_mode": "rewards", "kl_penalty": "kl=0.01", "loss_mode": "naive"}
    assert second.fields == {"num_epochs": 2, **second.values}
    assert second.config == make_config(**second.fields, seed=3)  # the grid's first seed
    runs = grid.runs()
    assert [(r.configuration, r.seed) for r in runs[:3]] == [
        ("rewards / kl=0 / naive", 3),
        ("rewards / kl=0 / naive", 1),
        ("rewards / kl=0.01 / naive", 3),
    ]
    pairs = zip(runs, [c for c in configurations for _ in range(2)])
    assert all(r.config == make_config(**c.fields, seed=r.seed) for r, c in pairs)
    assert len(runs) == grid.num_runs == 8
    assert parse_grid('name = "one"\nseeds = 2\n').configurations()[0].label == "all runs"


def test_the_axis_product_is_expanded_in_one_place():
    package = Path(__file__).resolve().parents[1] / "sortrl"
    # the product of the axes' value lists: `product(*...)` (figures cross rows and columns of panels, not axes)
    users = sorted(
        p.relative_to(package).as_posix() for p in package.rglob("*.py") if re.search(r"\bproduct\(\*", p.read_text())
    )
    assert users == ["study/grid.py"]
    assert parse_grid(GRID).configurations() == parse_grid(GRID).configurations()


def test_normal_form_of_values():
    assert normal(0) == normal(0.0) == normal(np.float64(0)) == "0.0"
    assert normal((3, 4)) == normal([3, 4]) == normal([3.0, 4.0])
    assert normal(True) != normal(1) and normal("0") != normal(0)
    assert normal(2**60 + 1) != normal(2**60)  # big integers stay exact
    assert value_label("kl_penalty", np.float64(0.01)) == "kl=0.01" and value_label("prompts", [[1, 2]]) == (
        "prompts=[[1,2]]"
    )


@pytest.mark.parametrize(
    ("axis", "needle"),
    [
        ("kl_penalty = [0, 0.0, 0.1]", "kl_penalty: lists a value twice (0 and 0.0 are one value)"),
        ('deltas_mode = ["rewards", "rewards"]', "deltas_mode: lists a value twice"),
        ("learning_rate = [0.1, 0.1000000001]", "learning_rate: values 0.1 and 0.1000000001 give the same label"),
    ],
)
def test_equal_values_and_equal_labels_are_refused(axis, needle):
    with pytest.raises(ConfigError) as error:
        parse_grid(f'name = "g"\n[grid]\n{axis}\n', "dup.toml")
    message = str(error.value)
    assert message.startswith("dup.toml: [grid] ") and needle in message and "\n" not in message


def test_values_that_make_the_same_runs_are_refused():
    """A one-length list is that length (`RunConfig` normalises it): two labels for the same runs."""
    with pytest.raises(ConfigError, match=r"prompt_length: values 3 and \[3\] give the same runs"):
        parse_grid('name = "g"\n[base]\ntask = "random"\n[grid]\nprompt_length = [3, [3]]\n')


def test_baseline_is_found_in_normal_form():
    grid = parse_grid(GRID)  # baseline says kl_penalty = 0 (an int), the axis has 0.0
    assert grid.baseline_configuration.label == "rewards / kl=0 / naive"
    assert grid.find({"deltas_mode": "centered_rewards", "kl_penalty": 0.01}).label == (
        "centered_rewards / kl=0.01 / naive"
    )
    assert grid.find({"deltas_mode": "max_rewards"}) is None
    assert parse_grid(
        GRID.replace('baseline = { deltas_mode = "rewards", kl_penalty = 0 }\n', "")
    ).baseline_configuration.label == ("rewards / kl=0 / naive")


CLAIM = """
[[claim]]
id = "K1"
statement = "a KL penalty helps"
subject = "the KL penalty"
source = "a paper"
new = { kl_penalty = 0.01 }
old = { kl_penalty = 0.0 }
predicts = "higher"
"""


def test_claims_are_declared_data_compared_at_the_baseline():
    grid = parse_grid(GRID + CLAIM + CLAIM.replace("K1", "K2").replace('"higher"', '"same"') + "seed = 1\n")
    first, second = grid.claims
    assert (first.id, first.statement, first.subject, first.source) == (
        "K1", "a KL penalty helps", "the KL penalty", "a paper",
    )  # fmt: skip
    assert (first.new, first.old, first.predicts, first.prediction) == (
        {"kl_penalty": 0.01}, {"kl_penalty": 0.0}, "higher", ">",
    )  # fmt: skip
    assert (first.kind, first.metric, first.margin, first.across) == ("pair", "final_score", 0.05, None)
    assert (second.predicts, second.prediction, second.seed) == ("same", "=", 1)
    # other axes (deltas_mode, loss_mode) at the baseline's values
    new, old = grid.select(first.new), grid.select(first.old)
    assert (new.label, old.label) == ("rewards / kl=0.01 / naive", "rewards / kl=0 / naive")
    assert grid.tests(first) == [{}]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (
            ('predicts = "higher"', 'predicts = "maybe"'),
            "predicts: unknown value 'maybe'; valid choices: higher, lower, same",
        ),
        (('statement = "a KL penalty helps"\n', ""), "statement: required"),
        (('id = "K1"', 'id = "K1"\nhow = 3'), "unknown key 'how'"),
        (("new = { kl_penalty = 0.01 }", "new = { kl_penalty = 0.5 }"), "no configuration of the grid has"),
        (("new = { kl_penalty = 0.01 }", "new = { kl_penalty = 0.0 }"), "new and old are the same configuration"),
        (("new = { kl_penalty = 0.01 }", "new = { klp = 0.01 }"), "new: 'klp' is not an axis or a RunConfig field"),
        (('predicts = "higher"', 'predicts = "higher"\nseed = 7'), "seed: must be one of the grid's seeds"),
        (('predicts = "higher"', 'predicts = "higher"\nmetric = 3'), "metric: a non-empty string, got 3"),
        (('predicts = "higher"', 'predicts = "higher"\nkind = "trend"'), "axis: a trend claim needs one of"),
        (('predicts = "higher"', 'predicts = "higher"\nmargin = -1'), "margin: must be a finite number > 0"),
        (('predicts = "higher"', 'predicts = "higher"\nmargin = inf'), "margin: must be a finite number > 0, got inf"),
        (('predicts = "higher"', 'predicts = "higher"\nmargin = nan'), "margin: must be a finite number > 0, got nan"),
        (('predicts = "higher"', 'predicts = "higher"\nmargin = 0'), "margin: must be a finite number > 0, got 0"),
        (('predicts = "higher"', 'predicts = "higher"\nimplied = nan'), "implied: must be a finite number > 0"),
        (('statement = "a KL penalty helps"', 'statement = "a KL\\npenalty helps"'), "statement: one line of text"),
        (('predicts = "higher"', 'predicts = "higher"\nacross = "colour"'), "across: must be one of the grid's axes"),
        (("old = { kl_penalty = 0.0 }\n", ""), "new, old: a pair claim compares two configurations"),
    ],
)
def test_bad_claims_are_one_line_errors(change, needle):
    with pytest.raises(ConfigError) as error:
        parse_grid(GRID + CLAIM.replace(*change), "claims.toml")
    message = str(error.value)
    assert message.startswith("claims.toml: [[claim]] K1: ") and needle in message and "\n" not in message


@pytest.mark.parametrize(
    "claim_id", ["../../../escaped", "/tmp/abs", "A\nB | x", "a.b", "with space", "x/y", "", "x" * 65], ids=repr
)
def test_a_claim_id_is_a_safe_file_name(claim_id):
    """A claim id becomes `figures/claim_<id>.png`: no separator, dot, newline or space gets through."""
    with pytest.raises(ConfigError) as error:
        parse_grid(GRID + CLAIM.replace('id = "K1"', f"id = {json.dumps(claim_id)}"), "claims.toml")
    message = str(error.value)
    assert message.startswith("claims.toml: [[claim]] 1: id: ") and "\n" not in message


def test_names_that_become_file_names_are_at_most_64_characters():
    """A 300-character claim id passed the sweep's check and trained; its figure file's name was then too long to
    write. Experiment names and claim ids are capped (64 characters), where they are declared."""
    parse_grid(GRID.replace('name = "', 'name = "' + "n" * 60, 1) + CLAIM.replace('id = "K1"', f'id = "{"k" * 64}"'))
    with pytest.raises(ConfigError, match="^claims.toml: name: required, a non-empty string of at most 64 letters"):
        parse_grid(GRID.replace('name = "', 'name = "' + "n" * 80, 1), "claims.toml")
    with pytest.raises(ConfigError, match="^claims.toml: \\[\\[claim\\]\\] 1: id: at most 64 letters"):
        parse_grid(GRID + CLAIM.replace('id = "K1"', f'id = "{"k" * 65}"'), "claims.toml")


def test_a_claim_naming_no_configuration_says_which_side():
    with pytest.raises(ConfigError, match="K1: old: no configuration of the grid has {'kl_penalty': 0.5}"):
        parse_grid(GRID + CLAIM.replace("old = { kl_penalty = 0.0 }", "old = { kl_penalty = 0.5 }"), "claims.toml")


def test_an_interaction_within_two_equal_values_is_refused():
    """`within = { kl_penalty = [0.0, 0]}` would make the interaction 0 by construction."""
    text = GRID + CLAIM.replace('predicts = "higher"', 'predicts = "higher"\nkind = "interaction"')
    text = text.replace(
        "old = { kl_penalty = 0.0 }", 'old = { kl_penalty = 0.0 }\nwithin = { deltas_mode = ["rewards", "rewards"] }'
    )
    with pytest.raises(ConfigError, match="within: two different values of its axis, got 'rewards' twice"):
        parse_grid(text, "claims.toml")
    parse_grid(text.replace('["rewards", "rewards"]', '["rewards", "centered_rewards"]'))  # distinct: accepted


def test_claim_ids_are_unique_across_grid_files():
    grid = parse_grid(GRID + CLAIM)
    check_claim_ids([("a.toml", grid), ("b.toml", parse_grid(GRID))])  # no clash
    with pytest.raises(ConfigError, match="b.toml: \\[\\[claim\\]\\] K1: id: also declared by a.toml"):
        check_claim_ids([("a.toml", grid), ("b.toml", grid)])


BUNDLED = """
name = "regimes"
seeds = 3
baseline = { regime = "lecture", deltas_mode = "rewards" }

[base]
num_epochs = 4

[grid]
regime = [{ name = "lecture" }, { name = "explore", temperature = 2.0, entropy_coeff = 0.3 }]
deltas_mode = ["rewards", "centered_rewards"]

[[claim]]
id = "R"
statement = "centering helps"
source = "the lecture"
new = { deltas_mode = "centered_rewards" }
old = { deltas_mode = "rewards" }
predicts = "higher"
"""


def test_a_bundle_axis_sets_several_fields_under_one_name():
    grid = parse_grid(BUNDLED)
    labels = [c.label for c in grid.configurations()]
    assert labels == [
        "lecture / rewards",
        "lecture / centered_rewards",
        "explore / rewards",
        "explore / centered_rewards",
    ]
    explore = grid.select({"regime": "explore"})
    assert (explore.config.temperature, explore.config.entropy_coeff, explore.config.num_epochs) == (2.0, 0.3, 4)
    assert grid.select({}).config.temperature == 1.0  # the baseline: lecture
    assert grid.bundles == ["regime"] and grid.axis_values("regime") == ["lecture", "explore"]
    (claim,) = grid.claims
    assert claim.across == "regime"  # a grid with a regime axis tests every claim in each regime
    assert grid.tests(claim) == [{"regime": "lecture"}, {"regime": "explore"}]
    assert [c.label for c in grid.matching({"regime": "explore"})] == labels[2:]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (('{ name = "lecture" }', "{ }"), "each value needs a name"),
        (('{ name = "lecture" }', '{ name = "explore" }'), "two values are named 'explore'"),
        (("entropy_coeff = 0.3", "entropy = 0.3"), "unknown field 'entropy'"),
        (("entropy_coeff = 0.3", "deltas_mode = 'rewards'"), "sets 'deltas_mode', which is an axis too"),
        (('regime = [{ name = "lecture" }, ', 'regime = ["lecture", '), "must be tables with a name"),
    ],
)
def test_bad_bundle_axes_are_one_line_errors(change, needle):
    with pytest.raises(ConfigError) as error:
        parse_grid(BUNDLED.replace(*change), "regimes.toml")
    assert str(error.value).startswith("regimes.toml: ") and needle in str(error.value)


def test_a_level_claim_compares_one_configuration_with_a_finite_constant():
    level = CLAIM.replace("old = { kl_penalty = 0.0 }\n", 'kind = "level"\nagainst = 0.5\n')
    (claim,) = parse_grid(GRID + level).claims
    assert (claim.kind, claim.against, claim.old) == ("level", 0.5, {})
    with pytest.raises(ConfigError, match="a level claim compares one configuration .* no old"):
        parse_grid(GRID + level.replace('kind = "level"', 'kind = "level"\nold = { kl_penalty = 0.0 }'), "c.toml")
    for bad in ("nan", "inf", '"half"', "true"):
        with pytest.raises(ConfigError, match="against: "):
            parse_grid(GRID + level.replace("against = 0.5", f"against = {bad}"), "c.toml")
    with pytest.raises(ConfigError, match="against: a level claim's constant"):  # only a level claim has one
        parse_grid(GRID + CLAIM.replace('predicts = "higher"', 'predicts = "higher"\nagainst = 0.0'), "c.toml")


@pytest.mark.parametrize(
    "text",
    [
        f"seeds = {MAX_RUNS + 1}",
        f"seeds = {{ start = 0, count = {MAX_RUNS + 1} }}",
        "seeds = 100000000000",
        f"seeds = {MAX_RUNS // 10}\n[grid]\nlearning_rate = [{', '.join(str(i / 100) for i in range(1, 12))}]",
    ],
    ids=["count", "range", "a hundred billion", "axes x seeds"],
)
def test_a_grid_over_the_run_limit_is_refused_in_under_a_second(text):
    """Above MAX_RUNS runs per grid file, one line naming the limit, before any run is built (planning a million
    runs takes a minute and gigabytes)."""
    import time

    start = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"at most {MAX_RUNS:,} (runs )?per grid file"):
        parse_grid(f'name = "huge"\n{text}\n')
    assert time.perf_counter() - start < 1
