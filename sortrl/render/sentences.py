"""The generated sentences about one experiment's findings, shared by `REPORT.md` and the README.

Every sentence is built from a `sortrl.analysis.findings.Findings` (nothing is computed
here) and says no more than its statistics support: a single best
configuration only when it separates from every other (paired CI), a tie
otherwise (a configuration whose results repeat another's bit for bit is
"identical" to it, never tied); verdicts only from the Holm-corrected paired
tests; null results (nothing learns, no run solves) stated as findings; a CI
that includes 0 is "not separated", never "equal". `short=True` gives the README's shorter
lists (a few names, then how many more).
"""

from __future__ import annotations

from sortrl.analysis.experiment import MARGIN
from sortrl.analysis.findings import (
    Comparison,
    Findings,
    Floor,
    Top,
    fmt_effect,
    fmt_estimate,
    fmt_num,
)

SHOWN = 3
"""Names listed in a short sentence before `and N more`."""


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _listed(items: list[str], short: bool) -> str:
    """`a, b and c`; with `short`, the first `SHOWN` and how many more."""
    if short and len(items) > SHOWN:
        return _and(items[:SHOWN] + [f"{len(items) - SHOWN} more"])
    return _and(items)


def _under(scale: str) -> str:
    return f" under {scale}" if scale else ""


def plural(n: int, word: str) -> str:
    """`1 claim`, `2 claims`: `n` and `word`, in the plural unless `n` is 1."""
    return f"{n} {word}{'s' * (n != 1)}"


# --- the top --------------------------------------------------------------------
def top_sentences(f: Findings, short: bool = True) -> list[str]:
    """Per reward scale: the single best configuration if it separates from every other, else who is tied."""
    several = len(f.tops) > 1
    return [_top(top, short, several) for top in f.tops]


def _identical_to(twins: list[str], first: str = "it") -> str:
    """`b is identical to it`, `b and c are identical to a`: `twins` repeat `first`'s results."""
    return f"{_and(twins)} {'is' if len(twins) == 1 else 'are'} identical to {first}"


def _top(top: Top, short: bool, several: bool) -> str:
    head = f"For {top.scale}: " if several and top.scale else ""
    twins = top.identical.get(top.leader, [])
    leader = f"{top.leader} ({fmt_estimate(top.score, 2)}{f'; {_identical_to(twins)}' if twins else ''})"
    if top.runner_up is None:
        where = _under(top.scale) if not head else ""
        if twins:
            return _capital(
                f"{head}{top.leader} ({fmt_estimate(top.score, 2)}) and {_and(twins)}, identical to it, are the only "
                f"configurations{where}."
            )
        return _capital(f"{head}{leader} is the only configuration{where}.")
    if top.single:
        return _capital(
            f"{head}highest mean final score: {leader}, ahead of the runner-up, {top.runner_up}, by "
            f"{fmt_effect(top.lead)} (paired by seed), and separated from every other configuration (paired CI above 0, "
            "Holm-corrected Wilcoxon test)."
        )
    others = [f"{t} ({_identical_to(top.identical[t])})" if t in top.identical else t for t in top.tied[1:]]
    return _capital(
        f"{head}no single best configuration: {plural(len(top.tied), 'configuration')} are tied at the top "
        f"(not separated from the leader, {leader}, by a paired CI above 0 and a Holm-corrected Wilcoxon test): "
        f"{_listed(others, short)}."
    )


def _capital(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


# --- comparisons (at a glance) -------------------------------------------------------
def comparisons_sentence(f: Findings, short: bool = True) -> str:
    """How many configurations are better / worse / no different / inconclusive against their references."""
    exp = f.experiment
    m = len(f.tested)
    if not m:
        finished = int(f.summary.set_index("configuration")["n"].get(exp.baseline, 0))
        if f.comparisons and finished < 2:  # say whose runs are missing, not the others'
            return (
                f"Nothing is compared with the baseline ({exp.baseline}): it has {plural(finished, 'finished run')}, "
                "fewer than the two a paired test needs."
            )
        return ""
    own = exp.reference_axes
    against = (
        f"its reference (the baseline's settings, {exp.baseline}, at its own {' / '.join(own)})"
        if own
        else f"the baseline ({exp.baseline})"
    )
    better = sorted(f.verdicts("better"), key=lambda c: -c.effect.point)
    worse = sorted(f.verdicts("worse"), key=lambda c: c.effect.point)
    same, open_ = f.verdicts("no difference"), f.verdicts("inconclusive")

    def named(chosen: list[Comparison]) -> str:
        items = [
            f"{c.configuration} {f'({identical_to(c, exp.baseline)})' if c.identical else fmt_effect(c.effect)}"
            for c in chosen
        ]
        return f" ({_listed(items, short)})" if chosen else ""

    return (
        f"Against {against}, paired by seed on the final score with Holm's correction over the "
        f"{plural(m, 'comparison')}: better for {len(better)}{named(better)}; worse for {len(worse)}{named(worse)}; "
        f"no difference (paired CI within ±{MARGIN:g}) for {len(same)}{named(same)}; inconclusive for {len(open_)}."
    )


def identical_to(c: Comparison, baseline: str) -> str:
    """`identical to the baseline` or `identical to <its reference>`, for a comparison whose sides are identical."""
    return f"identical to {'the baseline' if c.reference == baseline else c.reference}"


def identical_sentence(f: Findings, short: bool = True) -> str:
    """Which configurations repeat another's results bit for bit (`Experiment.identical`), each named with the first
    one it repeats; `""` when none do."""
    repeats: dict[str, list[str]] = {}
    for twin, first in f.experiment.identical.items():
        repeats.setdefault(first, []).append(twin)
    if not repeats:
        return ""
    pairs = [_identical_to(twins, first) for first, twins in repeats.items()]
    if short and len(pairs) > SHOWN:
        pairs = pairs[:SHOWN] + [f"{len(pairs) - SHOWN} more"]
    return (
        "Identical results (every final score and per-epoch curve equal on every seed, bit for bit): "
        f"{'; '.join(pairs)}."
    )


# --- null results ---------------------------------------------------------------
def floor_sentences(f: Findings, short: bool = True) -> list[str]:
    """Who learns nothing (final score within the margin of chance) and who solves, per reward scale."""
    out = [s for floor in f.floors for s in _chance(floor, short)]
    if f.floors and not any(floor.solved for floor in f.floors):
        runs = sum(floor.runs for floor in f.floors)
        out.append(
            f"No run solves the task: none of the {runs:,} runs ends with a greedy policy that sorts every training "
            "prompt."
        )
    else:
        out += [_solves(floor, short) for floor in f.floors if floor.runs]
    return out


def _chance(floor: Floor, short: bool) -> list[str]:
    where = _under(floor.scale)
    if floor.nothing_learns:
        return [
            f"Nothing learns{where}: every configuration's mean final score lies within ±{MARGIN:g} of chance, "
            "95% CI included (0 = the uniform random policy)."
        ]
    out = []
    if floor.mostly_at_chance:
        out.append(
            f"Most runs learn nothing{where}: {floor.runs_at_chance:,} of {floor.runs:,} runs end with a final score "
            f"within ±{MARGIN:g} of chance, and the IQM of the final score is at chance in "
            f"{len(floor.iqm_at_chance)} of {len(floor.configurations)} configurations."
        )
    if floor.at_chance:
        out.append(
            f"{len(floor.at_chance)} of {len(floor.configurations)} configurations{where} "
            f"{'does' if len(floor.at_chance) == 1 else 'do'} not rise above chance "
            f"(mean final score within ±{MARGIN:g}, CI included): {_listed(floor.at_chance, short)}."
        )
    return out


def _solves(floor: Floor, short: bool) -> str:
    where = _under(floor.scale)
    if not floor.solved:
        return f"No run solves the task{where} (0 of {floor.runs:,} runs)."
    return (
        f"{floor.solved:,} of {floor.runs:,} runs{where} solve the task (greedy policy sorts every training prompt), "
        f"in {plural(len(floor.solving), 'configuration')}: {_listed(floor.solving, short)}."
    )


# --- grid-specific ----------------------------------------------------------------
def _listing(values: list[float], digits: int = 2) -> str:
    return ", ".join(fmt_num(v, digits) for v in values)


def prompt_length_sentences(f: Findings) -> list[str]:
    """Held-out accuracy, the reward's share of its maximum against chance's, and the chance-normalised score."""
    rows = f.by_prompt_length
    if not rows:
        return []
    counts = sorted({r.runs for r in rows})
    runs = f"{counts[0]} runs each" if len(counts) == 1 else "runs of every configuration of that length"
    what = f.length_reward
    text = (
        f"Pooling every configuration of a prompt length ({runs}), as the length goes "
        f"{', '.join(str(r.length) for r in rows)}: the final held-out greedy accuracy is "
        f"{_listing([r.accuracy for r in rows])}; the final {what} mean reward is "
        f"{_listing([r.reward for r in rows])} of its maximum, and the uniform random policy's "
        f"{_listing([r.chance for r in rows])}, so the chance-normalised {what} score, (reward − chance) / "
        f"(max − chance), is {'; '.join(fmt_estimate(r.score, 2) for r in rows)}"
    )
    change = f.length_change
    if change is not None:
        first, last = rows[0].length, rows[-1].length
        moved = "falls" if change.high < 0 else "rises" if change.low > 0 else "changes"
        text += (
            f". From {first} to {last} numbers it {moved} by {fmt_effect(change)} (unpaired bootstrap: runs of "
            "different prompt lengths share no initial model)"
            + (", not separated from 0" if moved == "changes" else "")
        )
    return [text + "."]


def recipe_sentences(f: Findings) -> list[str]:
    """Recipes ranked by mean final score, neighbours separated only where their paired CI excludes 0; EOS."""
    if not f.rankings:
        return []
    clauses = []
    for ranking in f.rankings:
        text = "".join(
            f"{(' > ' if apart else ', ') if gap is not None else ''}{recipe} {fmt_num(score, 2)}"
            for recipe, score, gap, apart in ranking.entries
        )
        clauses.append(f"under {ranking.where}, {text}" if ranking.where else text)
    setting = f" with {f.ranking_setting}" if f.ranking_setting else ""
    out = [
        f"Recipes ranked by mean final score{setting} (>: the neighbours separate, their paired 95% CI above 0 and "
        "their Wilcoxon test significant after Holm's correction over the ranking's neighbours; a comma: they do "
        f"not, which is no evidence that they are equal): {'; '.join(clauses)}."
    ]
    if f.eos:
        parts = []
        for e in f.eos:
            moved = "longer" if e.change.low > 0 else "shorter" if e.change.high < 0 else ""
            change = (
                f"{moved} by {fmt_effect(e.change, 2)}"
                if moved
                else f"a change of {fmt_effect(e.change, 2)}, not separated from 0"
            )
            parts.append(
                f"{fmt_num(e.final, 2)} tokens of at most {e.maximum}{_under(e.where)}, against "
                f"{fmt_num(e.initial, 2)} for the untrained policy (first epoch): {change}"
            )
        out.append(
            "With EOS on, the final response length (tokens before the first EOS, mean over every recipe's runs; "
            f"changes paired by run) is {'; '.join(parts)}."
        )
    return out


def shared_sentence(f: Findings) -> str:
    """That every run of this experiment is also a run of another (same configuration and seed: `f.shared`)."""
    if not f.shared:
        return ""
    others = _and([f"`{name}`" for name, _ in f.shared])
    n = f.shared[0][1]
    return (
        f"Every one of this grid's {n:,} finished runs is also a run of {others} (same configuration and seed): "
        "its numbers repeat those runs', not independent evidence."
    )


def experiment_sentences(f: Findings, short: bool = True) -> list[str]:
    """Every finding of one experiment in sentences: the top, identical configurations, null results, the grid's own
    findings, shared runs.

    (The comparisons with the reference are the caller's: a count in the README, full lists in REPORT.md.)
    """
    out = top_sentences(f, short)
    out.append(identical_sentence(f, short))
    out += floor_sentences(f, short)
    out += prompt_length_sentences(f)
    out += recipe_sentences(f)
    out.append(shared_sentence(f))
    return [s for s in out if s]


# --- at a glance (REPORT.md's first section) -----------------------------------------------------------
ORDER = ("lecture", "ablations", "algorithms", "difficulty")
"""Order of the experiments at a glance (and the README's headline choice); experiments not listed follow, by name."""


def ordered(sections: list[Findings]) -> list[Findings]:
    """`sections` in `ORDER`, then by name."""
    rank = {name: i for i, name in enumerate(ORDER)}
    return sorted(sections, key=lambda f: (rank.get(f.experiment.name, len(ORDER)), f.experiment.name))


def summary_sentences(f: Findings) -> list[str]:
    """One experiment in a paragraph: its size, the top, the comparisons, null results, the rest."""
    exp = f.experiment
    if f.summary["n"].sum() == 0:
        return [f"**`{exp.name}`**: no finished runs yet."]
    head = f"**`{exp.name}`** ({len(exp.configs)} configurations × {len(exp.grid.seeds)} seeds)."
    found = experiment_sentences(f, short=True)
    tops = len(f.tops)
    return [s for s in (head, *found[:tops], comparisons_sentence(f), *found[tops:]) if s]
