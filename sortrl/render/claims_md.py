"""`CLAIMS.md` and the README's ledger blocks, rendered from the ledger's tests (`sortrl.analysis.claims`).

Every sentence is generated from the numbers: the verdict table (one row per
test), then a section per claim with its figure, what it compared, the effect
per test with its CI, corrected p-value and verdict, what the source's own
single seed showed where it drew the claim from one run, and, for an
inconclusive test, how many seeds a paired test would need.
"""

from __future__ import annotations

import math
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np

from sortrl.analysis.claims import (
    BINARY,
    MONOTONE,
    TREND_MARGIN,
    Test,
    agreeing,
    bound_flag,
    checks,
    claim_bound_flags,
    claim_verdicts,
    evidence,
    test_kind,
)
from sortrl.analysis.findings import fmt_interval
from sortrl.analysis.scores import DERIVED, SCORES, bounds
from sortrl.analysis.transfer import Transfer, lecture, matched_entropy, tally, transfers
from sortrl.analysis.verdicts import (
    ALPHA,
    CLAIM_VERDICTS,
    N_RESAMPLES,
    POWER,
    SIGNFLIP_RESAMPLES,
    VERDICTS,
    Interval,
    equal_share_bound,
    hypothesis_resolution,
    signflip_exact,
    signflip_floor,
)
from sortrl.engine.paired import EPOCHS as PAIRED_EPOCHS
from sortrl.render.claim_figures import REFERENCE, metric_label
from sortrl.render.sentences import plural


def fmt(x: float, digits: int = 3, sign: bool = False) -> str:
    """A number for the ledger; an en dash for NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def fmt_p(p: float, floor: float = 0.0, resamples: int = 0, raw: float | None = None) -> str:
    """A p-value printed no more precisely than it is known (`sortrl.analysis.verdicts.hypothesis_resolution`).

    `floor`: the smallest p-value its test can give; `resamples`: the random sign patterns it drew (0: exact); `raw`:
    for a corrected p-value, the uncorrected one it comes from (default: `p` itself). A p-value whose test found no
    pattern as extreme as the observed one (`raw` at the floor) prints as `≤` its value rounded up to one digit
    (`≤1e-5`; corrected, `≤0.002`): the floor is a bound, not an estimate. A drawn p-value prints with the
    significant digits its Monte Carlo standard error, sqrt(raw (1 - raw) / resamples) scaled with the correction,
    leaves (at most 3). An exact one: 3 significant digits, `<1e-6` below that.
    """
    if p is None or math.isnan(p):
        return "–"
    raw = p if raw is None else raw
    if floor > 0 and raw <= floor * (1 + 1e-9):
        return f"≤{_round_up(p)}"
    if resamples and 0 < raw < 1 and p < 1:
        error = p * math.sqrt((1 - raw) / (raw * resamples))  # the corrected p scales the raw one's error
        digits = max(1, min(3, math.floor(math.log10(p)) - math.floor(math.log10(error)) + 1))
        return _short(p, digits)
    return "<1e-6" if p < 1e-6 else f"{p:.3g}"


def _round_up(x: float) -> str:
    """`x` rounded up to one significant digit: 1e-5 stays `1e-5`, 0.00119 is `0.002`."""
    unit = 10.0 ** math.floor(math.log10(x))
    return _short(math.ceil(x / unit - 1e-9) * unit, 1)


def _short(x: float, digits: int) -> str:
    """`x` to `digits` significant digits, exponents without a leading zero (`1e-5`, `0.0013`, `0.48`)."""
    return f"{x:.{digits}g}".replace("e-0", "e-")


def fmt_test_p(t: Test, adjusted: bool = False) -> str:
    """A test's p-value (`adjusted`: its Holm-corrected one) at its test's resolution (`fmt_p`)."""
    if t.claim.kind == "level" and t.claim.metric in BINARY:  # an exact binomial test (`claims._level`)
        floor, resamples = 0.0, 0
    else:
        floor, resamples = hypothesis_resolution(t.n, t.claim.prediction, t.claim.metric in BINARY)
    return fmt_p(t.p_adjusted if adjusted else t.p, floor, resamples, raw=t.p)


def _p_is(text: str) -> str:
    """`= 0.48`, `≤ 1e-5`, `< 1e-6`: a formatted p-value after `p`."""
    return f"{text[0]} {text[1:]}" if text[:1] in "<≤" else f"= {text}"


def fmt_effect(effect: Interval, digits: int = 3) -> str:
    """`+0.123 [+0.100, +0.150]`; when every seed's effect is the same there is no interval of the mean (nothing bounds
    a seed that would differ): what is exact is the share of seeds that would differ (`equal_share_bound`)."""
    if effect.degenerate:
        share = equal_share_bound(effect.n)
        return f"{fmt(effect.point, digits, True)} (all {effect.n} seeds; < {100 * share:.1f}% of seeds would differ)"
    digits = _digits(digits, effect.low, effect.high)
    return fmt_interval(effect.point, effect.low, effect.high, digits, sign=True)  # more decimals if ends print alike


def _digits(digits: int, *ends: float) -> int:
    """Decimals enough to show the larger end of an interval (up to 8): +-0.000469, not -0.000 [-0.000, +0.000]."""
    largest = max((abs(x) for x in ends if not math.isnan(x)), default=0.0)
    if largest == 0:
        return digits
    return int(min(8, max(digits, 1 - math.floor(math.log10(largest)))))


COUNTED = {"solved": "solves", "stuck": "ends stuck in"}
"""How a 0/1 score's count of seeds reads (`solves 3/128`, `ends stuck in 128/128`)."""


def fmt_side(test: Test, i: int) -> str:
    side = test.sides[i]
    if test.claim.metric in BINARY:
        ci = side.interval
        counted = f"{COUNTED.get(test.claim.metric, 'scores 1 in')} {round(ci.point * ci.n)}/{ci.n}"
        return f"`{side.label}` {counted} ({fmt(ci.point, 2)} [{fmt(ci.low, 2)}, {fmt(ci.high, 2)}])"
    ci = side.interval
    return f"`{side.label}` {fmt_interval(side.mean, ci.low, ci.high, n=ci.n)}"


def verdict_table(tests: list[Test], link: str = "") -> list[str]:
    """The verdict table: one row per test (`link`: where the claim sections are, for the id links)."""
    lines = [
        "| claim | statement | source | test | tested in | effect [95% CI] | p (Holm) | verdict | seeds |",
        "| --- | --- | --- | --- | --- | --- | ---: | --- | ---: |",
    ]
    for t in tests:
        where = _where(t) or "–"
        lines.append(
            f"| [{t.claim.id}]({link}#{_anchor(t.claim.id)}) | {_cell(t.claim.statement)} | {_cell(t.claim.source)} | "
            f"{test_kind(t.claim)} | {where} | "
            f"{fmt_effect(t.effect)} | {fmt_test_p(t, adjusted=True)} | {fmt_verdict(t)} | {t.n} |"
        )
    return lines


def fmt_verdict(t: Test) -> str:
    """`**no effect** (at the floor)`: a test's verdict in bold, with its bound flag (`claims.bound_flag`)."""
    flag = bound_flag(t)
    return f"**{t.verdict}**" + (f" ({flag})" if flag else "")


def _where(t: Test) -> str:
    """Where a test was made: `regime=explore; kl=0.1` (empty for a claim tested once)."""
    return "; ".join(x for x in (t.where, t.case) if x)


def _anchor(claim_id: str) -> str:
    return f"claim-{claim_id.lower()}"


def counts(tests: list[Test]) -> str:
    """`12 supported, 3 contradicted, 40 no effect (30 at the floor), ...` over the ledger's tests."""
    found = Counter(t.verdict for t in tests)
    flagged = Counter((t.verdict, bound_flag(t)) for t in tests if bound_flag(t))
    return ", ".join(f"{found[v]} {v}{_flagged(flagged, v)}" for v in VERDICTS)


def claim_counts(tests: list[Test]) -> str:
    """`5 supported, 2 mixed, 4 not supported (3 at the floor), ...` over the ledger's claims (claim-level verdicts;
    those that occur)."""
    verdicts, flags = claim_verdicts(tests), claim_bound_flags(tests)
    found = Counter(verdicts.values())
    flagged = Counter((verdicts[c], flag) for c, flag in flags.items() if flag)
    return ", ".join(f"{found[v]} {v}{_flagged(flagged, v)}" for v in CLAIM_VERDICTS if found[v])


def _flagged(flagged: Counter, verdict: str) -> str:
    """` (30 at the floor)`: how many of a verdict's count carry each bound flag (empty when none does)."""
    parts = [f"{n} {flag}" for (v, flag), n in sorted(flagged.items()) if v == verdict]
    return f" ({', '.join(parts)})" if parts else ""


def render(all_tests: list[Test], figures: dict[str, str]) -> str:
    """CLAIMS.md text from the ledger's tests (`claims.ledger`) and each claim's figure path (relative to it)."""
    tests, checked = evidence(all_tests), checks(all_tests)
    claims = list(dict.fromkeys(t.claim.id for t in tests))
    n_min = min((t.n for t in tests if t.n), default=0)
    lines = [
        "# sortrl claims ledger",
        "",
        "Generated by `sortrl report` from the runs stored under `runs/`: every number, verdict and sentence below is "
        "computed from them, and each claim is declared as data in the grid file that tests it "
        "(its `[[claim]]` tables; the copy the sweep used is `runs/<experiment>/grid.toml`). Regenerate with `sortrl report` (in the sortrl repository, `make report`; `make ablations` to retrain).",
        "",
        "How to read it:",
        "",
        "- A seed is the same initial model and the same data stream in every configuration of a grid, so "
        "configurations are compared **paired by seed**: a test's effect is the mean over seeds of the per-seed "
        f"effect, with a 95% percentile-bootstrap CI over seeds ({N_RESAMPLES:,} resamples, seed 0); for solved / "
        "unsolved an exact interval (Clopper-Pearson, conservative); where every seed's effect is the same, the "
        "exact bound on the share of seeds that would differ.",
        "- Each test tests what its claim predicts (column *test*): a **difference** (two-sided sign-flip "
        "permutation test of the mean effect; McNemar's exact test for solved / unsolved), **equivalence** (TOST: "
        "both one-sided tests against the margin), **non-inferiority** (one-sided, against minus the margin), a "
        "**trend** (as a whole: the per-seed Spearman rho between the position along the axis and the score; "
        "then each step between neighbouring values, a difference each), a **magnitude** (the "
        "size of a contrast at one setting minus at another, or minus the size of another contrast) or a **within-run correlation** (Spearman rho over a "
        f"run's epochs). All {len(tests)} p-values are corrected together with Holm's method (family-wise error "
        f"{ALPHA:g}); the contrary tests below with Bonferroni's, over the same family. {_resolution(tests)}",
        "- Verdicts: **supported** (the prediction's corrected test is significant, a difference in the predicted "
        "direction); **contradicted** (a difference the other way; for equivalence or non-inferiority, an effect "
        "significantly beyond the margin on the wrong side); **no effect** (a predicted difference that is "
        "significantly equivalent: TOST within the margin); **inconclusive** (neither; the section says how many "
        f"seeds the test would need at {POWER:.0%} power at the corrected level). A claim tested more than once "
        "gets a claim-level verdict: supported (every test), supported in part (some, none against), mixed, "
        "contradicted, or not supported.",
        "- **At the floor** (or ceiling): a verdict of no difference (no effect; a supported equivalence or "
        "non-inferiority; a claim not supported) whose compared configurations all have a mean within one margin of "
        "the same bound of the metric (the lowest or highest value it can take: 0 for a share, a spread, an entropy "
        "or solved seeds; chance for the final score) carries the flag *at the floor*. Such sides cannot differ by "
        "more than the margin whatever the configurations do, so the verdict cannot tell an absent effect from one "
        "the floor hides (a policy stuck in the trap, one that stopped moving, an exact rate near 0); the verdict "
        "stands, flagged, and a claim-level verdict is flagged when every test of the claim is.",
        "- Rewards are compared on a common scale, the **final score**: the final reward (mean over the last 10% "
        "of epochs) minus the uniform random policy's expected reward, divided by the best possible minus that "
        "(0 = chance, 1 = every response sorted); the random policy's reward is computed exactly by enumerating "
        "every response of each prompt. **Solved** = the greedy policy sorts every training prompt after the "
        f"last epoch (Wilson 95% intervals). Every test pairs at least {n_min} seeds.",
        engine_line(all_tests),
        "",
        "## Verdicts",
        "",
        f"{plural(len(claims), 'claim')}, {plural(len(tests), 'test')}: {counts(tests)}. Claims: "
        f"{claim_counts(tests)}.",
        "",
        *verdict_table(tests),
        "",
        *transfer_section(all_tests),
        *check_table(checked),
    ]
    for claim_id in dict.fromkeys(t.claim.id for t in all_tests):
        mine = [t for t in all_tests if t.claim.id == claim_id]
        lines += _section(mine, figures.get(claim_id))
    return "\n".join(lines).rstrip() + "\n"


def engine_line(tests: list[Test]) -> str:
    """Which training path (`RunConfig.engine`) trained the runs each test compares."""
    fast = sorted({t.claim.id for t in tests if "fast" in t.engines})
    if not fast:
        return (
            '- Training path: every run was trained on the exact path (`engine = "exact"`: the lecture\'s '
            "arithmetic, bit for bit, as `sortrl verify` checks); none on the opt-in fast path."
        )
    return (
        f'- Training path: the runs of {", ".join(fast)} were trained on the opt-in fast path (`engine = "fast"`: '
        "the same math in another float order, statistically equivalent to the exact path, not bit-identical); "
        "every other run on the exact path."
    )


def _resolution(tests: list[Test]) -> str:
    """The rules' sentence on how finely a sign-flip p-value is known, with the floor Holm's correction reaches."""
    exact_up_to = int(math.log2(SIGNFLIP_RESAMPLES + 1))
    drawn = [t.n for t in tests if t.n > 1 and not signflip_exact(t.n)]
    text = (
        f"A sign-flip test enumerates all 2^n sign patterns up to {exact_up_to} seeds (an exact p-value) and draws "
        f"{SIGNFLIP_RESAMPLES:,} random ones beyond (seed 0)"
    )
    if not drawn:
        return text + "."
    one, two = signflip_floor(max(drawn), "greater"), signflip_floor(max(drawn))
    return (
        f"{text}, so with {max(drawn)} seeds its smallest p-value is {_short(one, 2)} one-sided, {_short(two, 2)} "
        f"two-sided, and Holm's correction over the {len(tests)} tests can still reach {_short(len(tests) * two, 2)}, "
        f"well below {ALPHA:g}. A p-value printed `≤x` is at that floor (no drawn pattern was as extreme as the "
        "observed one); the others print with no more digits than their Monte Carlo error allows."
    )


def check_table(checked: list[Test], link: str = "") -> list[str]:
    """The implementation checks: claims that hold by construction, checked seed by seed, outside the counts."""
    if not checked:
        return []
    lines = [
        "## Implementation checks",
        "",
        "These claims hold by construction (the column *why* says how), so their runs are no evidence for them: "
        "they check that the implementation does what the construction says, at the level where the construction is "
        "exact. Each must hold in every seed (within its stated tolerance, for float rounding); they are outside the "
        "Holm family and the counts above. An identity about one step's gradient (on-policy, every importance ratio "
        "is exactly 1) is checked on that gradient: both configurations' losses, built by the engine's own code on "
        "the same parameters and sampled batch, must give the same gradient within float32's rounding bound; whole "
        "runs are shown beside it as context, since a last-bit difference in one step can change a later sample and "
        "training amplifies it.",
        "",
        "| claim | statement | why it holds by construction | tested in | result |",
        "| --- | --- | --- | --- | --- |",
    ]
    for t in checked:
        where = _where(t) or "–"
        lines.append(
            f"| [{t.claim.id}]({link}#{_anchor(t.claim.id)}) | {_cell(t.claim.statement)} | {_cell(t.claim.identity)} "
            f"| {where} | **{t.verdict}**: {_check_result(t)} |"
        )
    return [*lines, ""]


def _check_result(t: Test) -> str:
    """`126 of 128 seeds identical to the last bit, the others within 0.0029 (tolerance 0.005)` and the like."""
    d, claim = t.differences, t.claim
    if len(d) == 0:
        return "no seed finished both configurations"
    if claim.check == "gradient":
        return f"{_gradient_result(t)}; {_runs_context(t)}"
    if claim.kind == "level" and claim.predicts == "same" and claim.tolerance == 0:
        return f"{metric_label(claim.metric)} is {claim.against:g} in {int((d == 0).sum())} of {len(d)} seeds"
    if claim.predicts == "same":
        return _identical(d) + (
            f", the others within {float(np.abs(d[d != 0]).max()):.2g} (tolerance {claim.tolerance:g})"
            if np.any(d != 0)
            else ""
        )
    sign = {"higher": 1, "not lower": 1, "lower": -1, "not higher": -1}[claim.predicts]
    agree = int(agreeing(t).sum())  # the seeds `check` counts as agreeing
    worst = float(np.min(sign * d)) * sign
    return f"{claim.predicts} in {agree} of {len(d)} seeds (least: {worst:+.2g})"


def _identical(d: np.ndarray) -> str:
    """`123 of 128 seeds identical to the last bit`."""
    return f"{int((d == 0).sum())} of {len(d)} seeds identical to the last bit"


def _gradient_result(t: Test) -> str:
    """A `gradient` check's result: how many seeds' two gradients agree within float32's rounding bound, the largest
    difference, and how many are bit-identical (none when the engine sums the two losses in different orders)."""
    g, bound = t.gradient, t.gradient_tolerance
    if len(g) == 0:
        return "gradients not compared (no seed)"
    exact = int((g == 0).sum())
    order = (
        "the engine builds the two losses in different float orders, so they cannot be bit-identical"
        if exact == 0
        else f"{exact} bit-identical"
    )
    return (
        f"one step's gradient agrees within float32 rounding in {int(np.sum(g <= bound))} of {len(g)} seeds "
        f"(largest difference {float(g.max()):.2g} eps x the run's largest gradient element; bound {bound:g}, "
        f"n eps for the n = {bound:g} sampled tokens one element sums; {order})"
    )


def _runs_context(t: Test) -> str:
    """What the stored runs show of a `gradient` check (context, not its verdict): float order amplified by training."""
    d = t.differences
    text = f"whole runs (context, not the verdict): {_identical(d)} on {metric_label(t.claim.metric)}"
    if np.any(d != 0):
        text += (
            f", the others within {float(np.abs(d[d != 0]).max()):.2g}: a last-bit difference in one step's gradient "
            "can change a later sample, and training amplifies it"
        )
    return text


def _section(tests: list[Test], figure: str | None) -> list[str]:
    # the claim as declared: a trend's monotone row carries its own margin (TREND_MARGIN, in rho), not the claim's
    claim = next((t.claim for t in tests if t.case != MONOTONE), tests[0].claim)
    metric = claim.metric
    doc = "a per-epoch curve" if claim.kind == "within-run" else DERIVED.get(metric) or SCORES[metric].doc
    claim_flag = claim_bound_flags(tests)[claim.id]
    verdict_line = (
        f"Claim-level verdict over its {len(tests)} tests: **{claim_verdicts(tests)[claim.id]}**"
        + (f" ({claim_flag}: so is every one of its tests)." if claim_flag else ".")
        if len(tests) > 1
        else ""
    )
    lines = [
        f'<a id="{_anchor(claim.id)}"></a>',
        f"### {claim.id} · {claim.statement}",
        "",
        f"Source: {claim.source}. Tested in grid `{tests[0].experiment}`, as {_article(test_kind(claim))}, on "
        f"{metric_label(metric)}: {doc}. Prediction: {_prediction(claim)}"
        + (
            f"; checked on one step's loss gradient at each of the first {PAIRED_EPOCHS} epochs of `old`'s runs, "
            "both sides on the same parameters and sampled batch, within float32's rounding bound (n eps x the run's "
            "largest gradient element, n the sampled tokens one element sums; Higham 2002, section 4.2)."
            if claim.check == "gradient"
            else f"; tolerance ±{claim.tolerance:g}."
            if claim.identity
            else f"; margin ±{claim.margin:g} ({claim.margin_reason or 'no reason given in the grid file'}). "
            f"{verdict_line}"
        ),
        "",
    ]
    if figure:
        lines += [f"![{claim.id}]({figure})", ""]
    if claim.rationale:
        lines += [f"Why this test: {claim.rationale}", ""]
    if claim.identity:
        lines += [f"An implementation check, not evidence: {claim.identity}", ""]
    for t in tests:
        lines.append(f"- {_check_sentence(t) if claim.identity else _sentence(t)}")
    return lines + [""]


def _check_sentence(t: Test) -> str:
    where = _where(t)
    head = f"**{where}**: " if where else ""
    compared = "; ".join(fmt_side(t, i) for i in range(len(t.sides)))
    return f"{head}{_check_result(t)} ({compared}): **{t.verdict}**."


def _prediction(claim) -> str:
    if claim.kind == "within-run":
        what = f"the per-seed Spearman rho between {claim.x} and {claim.metric} over a run's epochs"
    elif claim.kind == "trend":
        what = (
            f"the per-seed rank correlation along `{claim.axis}` (margin ±{TREND_MARGIN:g} rho) and each step along "
            "it (a value minus the one before it)"
        )
    elif claim.versus:
        first = f"{_values(claim.new)} minus {_values(claim.old)}"
        second = f"{_values(claim.versus['new'])} minus {_values(claim.versus['old'])}"
        what = f"the size of ({first}) minus the size of ({second})"
    elif claim.kind in ("interaction", "magnitude"):
        axis, (a, b) = next(iter(claim.within.items()))
        contrast = f"{_values(claim.new)} minus {_values(claim.old)}"
        contrast = f"the size of ({contrast})" if claim.kind == "magnitude" else f"the difference ({contrast})"
        what = f"{contrast} at {axis}={a} minus at {axis}={b}"
    elif claim.kind == "each":
        what = f"each value of `{claim.axis}` minus {_values(claim.old)}"
    elif claim.kind == "level":
        what = f"{_values(claim.new)} minus the constant {claim.against:g}"
    else:
        what = f"{_values(claim.new)} minus {_values(claim.old)}"
    word = {
        "higher": "above 0",
        "lower": "below 0",
        "same": "0 (within the margin)",
        "not lower": "not below minus the margin",
        "not higher": "not above the margin",
    }[claim.predicts]
    return f"{what} is {word}"


def _article(noun: str) -> str:
    """`a trend`, `an implementation check`."""
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _one_sample(t: Test) -> str:
    """For a 0/1 score where a side is the same in every seed (`sft` solves 128/128 by construction): the paired
    test is in effect a one-sample result on the other side's rate, and the section says so (empty otherwise)."""
    if t.claim.metric not in BINARY or len(t.sides) != 2 or t.n == 0:
        return ""
    constant = [side for side in t.sides if side.mean in (0.0, 1.0)]
    if len(constant) == 1:
        (fixed,) = constant
        (other,) = [side for side in t.sides if side is not fixed]
        return (
            f" `{fixed.label}` is {int(fixed.mean)} in every seed, so this is in effect a one-sample result: "
            f"`{other.label}`'s rate against the constant {int(fixed.mean)}."
        )
    a, b = t.sides
    if len(constant) == 2 and a.mean != b.mean:
        return (
            f" Both sides are the same in every seed ({int(a.mean)} and {int(b.mean)}), so the paired test is in effect "
            f"one-sample: each of the {t.n} seeds differs the same way, and the exact intervals of the two rates are "
            "the evidence."
        )
    return ""


def _values(values: dict) -> str:
    return " / ".join(f"`{v}`" for v in values.values()) or "the baseline"


def _sentence(t: Test) -> str:
    where = _where(t)
    head = f"**{where}**: " if where else ""
    if t.n == 0:  # a sweep stopped before the runs this test needs (or they all diverged): nothing to weigh
        return f"{head}no runs yet: no seed finished every configuration this test compares; it is **{t.verdict}**."
    compared = "; ".join(fmt_side(t, i) for i in range(len(t.sides)))
    body = f"over {t.n} seeds, effect {fmt_effect(t.effect)} ({compared})"
    text = f"{head}{body}; p {_p_is(fmt_test_p(t))}, Holm-corrected {fmt_test_p(t, adjusted=True)}: {fmt_verdict(t)}."
    text += _bound_sentence(t)
    text += _one_sample(t)
    if t.verdict == "contradicted" and t.claim.predicts == "same" and len(t.sides) == 2:
        text += f" The difference is real: `{t.sides[0].label}` scores {'higher' if t.effect.point > 0 else 'lower'}."
    if not math.isnan(t.seed_effect):
        agrees = _agrees(t.claim.predicts, t.seed_effect, t.claim.margin)
        text += f" The source's single run (seed {t.claim.seed}) alone shows {fmt(t.seed_effect, 3, True)}, which " + (
            "agrees with its prediction, as the seeds do."
            if agrees and t.verdict == "supported"
            else f"{'agrees' if agrees else 'does not agree'} with its prediction; across seeds: {t.verdict}."
        )
    text += _learned_nothing(t)
    if t.verdict == "inconclusive":
        text += " " + _needed(t)
    if t.claim.metric in BINARY and all(s.mean == 0 for s in t.sides):
        text += " No run of either configuration solved the task."
    return text


def _bound_sentence(t: Test) -> str:
    """Why a verdict is flagged at the floor (`claims.bound_flag`); empty when it is not."""
    flag = bound_flag(t)
    if not flag:
        return ""
    low, high = bounds(t.claim.metric)
    value = low if t.bound == "floor" else high
    # a trend's rank-correlation row carries a margin in rho; its sides were judged by the claim's (its steps')
    within = "within the claim's margin" if t.case == MONOTONE else f"within the margin (±{t.claim.margin:g})"
    return (
        f" {flag[0].upper()}{flag[1:]}: every configuration's mean lies {within} of {value:g}, the {t.bound} of "
        f"{metric_label(t.claim.metric)}, so no difference beyond the margin could show whatever the configurations "
        f"do: this verdict cannot tell an absent effect from one the {t.bound} hides."
    )


def _learned_nothing(t: Test) -> str:
    """A warning for sides whose runs end near a uniform policy (final entropy >= 0.9 ln V): they learned nothing."""
    flagged = [side for side in t.sides if side.uniform]
    if not flagged:
        return ""
    which = "; ".join(f"`{side.label}` in {side.uniform} of {t.n} seeds" for side in flagged)
    most = any(side.uniform > t.n / 2 for side in flagged)
    return f" Runs that end near a uniform policy (learned nothing): {which}" + (
        ", so this verdict rests on a policy that did not learn." if most else "."
    )


def _needed(t: Test) -> str:
    """Why an inconclusive test is so, and how many seeds would settle it (or why none would)."""
    size = t.claim.implied if t.needed_for == "implied" else t.effect.point
    which = "the effect its source implies" if t.needed_for == "implied" else "the observed effect"
    if t.needed:
        return (
            f"Its test would need about {t.needed:,} seeds at {POWER:.0%} power at the corrected level, if the true "
            f"effect were {which} ({fmt(size, 3, True)})."
        )
    if len(t.differences) > 1 and np.all(t.differences == t.differences[0]):
        return "Every seed's effect is the same, so more seeds would not change it."
    return f"At {which} ({fmt(size, 3, True)}) no number of seeds would make its test conclusive."


def _agrees(predicts: str, value: float, margin: float) -> bool:
    return {
        "same": abs(value) <= margin,
        "higher": value > 0,
        "lower": value < 0,
        "not lower": value > -margin,
        "not higher": value < margin,
    }[predicts]


def compact_table(tests: list[Test], link: str) -> list[str]:
    """One row per claim: its statement and each setting's verdict (counted where a claim has many tests); its source
    is in its section, one click away (the README keeps every line under `README_LINE` characters)."""
    lines = ["| claim | statement | verdict | tests |", "| --- | --- | --- | --- |"]
    overall, flags = claim_verdicts(tests), claim_bound_flags(tests)
    for claim_id in dict.fromkeys(t.claim.id for t in tests):
        mine = [t for t in tests if t.claim.id == claim_id]
        cells = []
        for where in dict.fromkeys(t.where for t in mine):
            here = [t for t in mine if t.where == where]
            if len(here) == 1:
                flag = bound_flag(here[0])
                cells.append(
                    f"{where or 'all'}: **{here[0].verdict}** ({fmt(here[0].effect.point, 3, True)}"
                    + (f", {flag})" if flag else ")")
                )
            else:
                found = Counter(t.verdict for t in here)
                flagged = Counter(bound_flag(t) for t in here if bound_flag(t))
                listed = ", ".join(f"{found[v]} {v}" for v in VERDICTS if found[v])
                at = "".join(f"; {n} {flag}" for flag, n in sorted(flagged.items()))
                cells.append(f"{where or 'all'}: {listed} (of {plural(len(here), 'test')}{at})")
        claim = mine[0].claim
        flag = flags[claim_id]
        lines.append(
            f"| [{claim_id}]({link}#{_anchor(claim_id)}) | {_cell(claim.statement)} | "
            f"**{overall[claim_id]}**{f' ({flag})' if flag else ''} | {'; '.join(cells)} |"
        )
    return lines


def readme_block(all_tests: list[Test], figure: Path | None, claims_link: str, caption: str) -> str:
    """The README headline: the trap figure (solve rate by choice, SFT reference) and the ledger, one row per claim."""
    tests, checked = evidence(all_tests), checks(all_tests)
    lines = []
    if figure is not None:
        lines += [f"![the partial-credit trap: solve rate by choice]({figure.as_posix()})", "", f"*{caption}*", ""]
    lines += [  # a paragraph over two lines (Markdown joins them), each under README_LINE characters
        f"**The claims ledger** (claims: {claim_counts(tests)}; tests: {counts(tests)}; paired by seed, "
        "Holm-corrected over the whole ledger;",
        "effects on the chance-normalised final score unless the claim says otherwise; every test, figure and number: "
        f"[{claims_link}]({claims_link})):",
        "",
        *compact_table(tests, claims_link),
    ]
    if transfers(all_tests):
        anchor = TRANSFER_HEADING.lower().replace(" ", "-")
        lines += [
            "",
            *_prose(
                f"**Do the verdicts survive a change of model?** {transfer_sentence(all_tests)} Per claim: "
                f"[{claims_link}]({claims_link}#{anchor})."
            ),
        ]
    if checked:
        ids = ", ".join(sorted({t.claim.id for t in checked}))
        failed = [t.label for t in checked if t.verdict != "holds"]
        lines += [
            "",
            *_prose(
                f"Implementation checks (claims that hold by construction, so not evidence: {ids}): "
                f"{sum(t.verdict == 'holds' for t in checked)} of {plural(len(checked), 'check')} hold in every seed"
                + (f"; not in every seed: {', '.join(failed)}." if failed else ".")
            ),
        ]
    return "\n".join(lines)


README_LINE = 300
"""The longest line the README's generated prose has (its table rows are one line each and stay under 400)."""


def _prose(text: str) -> list[str]:
    """A paragraph as lines of at most `README_LINE` characters, broken at spaces only (Markdown joins them)."""
    return textwrap.wrap(text, README_LINE, break_long_words=False, break_on_hyphens=False)


def trap_caption(tests: list[Test]) -> str:
    """A generated sentence on the trap figure: how many configurations solve at all, against the SFT reference."""
    trap = [t for t in tests if t.claim.id == headline_claim(tests)]
    if not trap:
        return "Solve rate by choice."
    sides = {s.label: s for t in trap for s in t.sides if not _is_reference(s.label)}
    solving = sorted(label for label, s in sides.items() if s.mean > 0)
    # the reference's solve rate from the tests on the trap's metric only (L3b scores sft on "stuck", which is 0)
    same_metric = [t for t in tests if t.experiment == trap[0].experiment and t.claim.metric == trap[0].claim.metric]
    reference = {s.label: s for t in same_metric for s in t.sides if _is_reference(s.label)}.values()
    ref = (
        f"supervised learning (`sft`) solves {fmt(np.mean([s.mean for s in reference]), 2)} of seeds; "
        if reference
        else ""
    )
    n = trap[0].n
    return (
        f"Solve rate (greedy policy sorts every prompt, Wilson 95% CI) of each choice over {n} seeds: {ref}"
        f"{len(solving)} of {len(sides)} policy-gradient configurations (choice x regime) solve any seed. Drawn by "
        "`sortrl report` from the stored runs."
    )


def _is_reference(label: str) -> bool:
    """Whether a configuration label (`"lecture / sft"`) names the supervised reference."""
    return REFERENCE in label.split(" / ")


def headline_claim(tests: list[Test]) -> str | None:
    """The claim whose figure heads the README: the solve-rate figure with the most tests (the trap's E1)."""
    drawn = Counter(t.claim.id for t in tests if t.claim.figure == "solve_bars")
    return max(drawn, key=lambda k: (drawn[k], k)) if drawn else None


def _cell(text: str) -> str:
    """`text` in a Markdown table cell: a `|` of its own (`mean |advantage|`) escaped, so it does not split the cell."""
    return text.replace("|", "\\|")


TRANSFER_HEADING = "Transfer to a second model family"


def transfer_section(all_tests: list[Test], link: str = "") -> list[str]:
    """CLAIMS.md's section on the claims tested on each model family (`sortrl.analysis.transfer`): the rule, the
    families' initial entropies and one row per claim with its verdict per family and the column *holds on*; no
    lines when no claim is tested across families."""
    found = transfers(all_tests)
    if not found:
        return []
    families = list(found[0].verdicts)
    lines = [
        f"## {TRANSFER_HEADING}",
        "",
        f"Claims tested once per model family ({', '.join(f'`{f}`' for f in families)}). A claim **holds** on a "
        "family when its claim-level verdict over that family's tests is supported or supported in part (some test "
        "supports it and none contradicts it); an implementation check holds when it holds in every seed. Column "
        f"*holds on*: where it holds. {transfer_sentence(all_tests)}",
        "",
        f"| claim | statement | {' | '.join(families)} | holds on |",
        f"| --- | --- | {' | '.join('---' for _ in families)} | --- |",
    ]
    for t in found:
        cells = " | ".join(t.verdicts[f] for f in families)
        lines.append(
            f"| [{t.claim.id}]({link}#{_anchor(t.claim.id)}) | {_cell(t.claim.statement)} | {cells} | "
            f"**{t.holds_on}** |"
        )
    return [*lines, ""]


def transfer_sentence(all_tests: list[Test]) -> str:
    """`Of the lecture's 3 conclusions tested on both families (T-L1, ...), 2 hold on both; of all 8 claims: ...`,
    with the families' initial entropies when a claim checks them (empty without transferred claims)."""
    every = transfers(all_tests)
    if not every:
        return ""
    found = [t for t in every if not t.claim.identity]  # claims; the implementation checks are counted apart
    own = lecture(found)
    text = (
        f"Of the lecture's {plural(len(own), 'conclusion')} tested on both families "
        f"({', '.join(t.claim.id for t in own)}), {_holding(own)} {'holds' if _holding(own) == 1 else 'hold'} "
        f"on both; of all {plural(len(found), 'transferred claim')}: {_listed(found)}."
        if own
        else f"Of {plural(len(found), 'transferred claim')}: {_listed(found)}."
        if found
        else ""
    )
    checked = [t for t in every if t.claim.identity]
    if checked:
        ids = ", ".join(t.claim.id for t in checked)
        text += f" Implementation checks on both families ({ids}; not evidence): {_listed(checked)}."
    text = text.strip()
    entropy = matched_entropy(all_tests)
    if entropy is not None:
        starts = ", ".join(f"`{side.label}` {fmt(side.mean, 2)}" for side in reversed(entropy.sides))
        text += (
            f" Initial entropy per response token (first epoch, mean over {entropy.n} seeds): {starts} nats "
            f"({entropy.claim.id}: {entropy.verdict} within {entropy.claim.margin:g} nats)."
        )
    return text


def _listed(found: list[Transfer]) -> str:
    """`2 hold on both, 1 linear only`: the transfer column's values by count, most first."""
    ordered = sorted(tally(found).items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{n} {key if n == 1 else key.replace('holds', 'hold')}" for key, n in ordered)


def _holding(found: list[Transfer]) -> int:
    return sum(t.holds_on == "holds on both" for t in found)
