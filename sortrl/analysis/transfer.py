"""Which verdicts transfer between model families: a claim tested once per value of the `model` axis (issue 25).

A claim declared with `across = "model"` (e.g. `experiments/claims/transfer.toml`) has one test, or one set of
tests (a trend's monotone test and steps), per model family. Its verdict on one family is the claim-level verdict of
that family's tests alone (`sortrl.analysis.verdicts.claim_verdict`, the ledger's Holm-corrected verdicts), and the
rule is:

- a claim **holds** on a family when its claim-level verdict there is `supported` or `supported in part` (at least
  one test supports it and none contradicts it: a trend whose monotone test and some steps are supported holds);
  an implementation check (`Claim.identity`) holds when every one of its checks holds in every seed;
- the transfer column says on which families it holds: `holds on both`, `<family> only` (`linear only`,
  `transformer only`) or `neither`.

Pure: the tests in, the table's data out (`sortrl.render.claims_md` renders it).
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

from sortrl.analysis.claims import Test
from sortrl.analysis.verdicts import claim_verdict
from sortrl.study.grid import Claim

AXIS = "model"
"""The axis a transferred claim is tested across (`Claim.across`)."""

HOLDING = ("supported", "supported in part")
"""Claim-level verdicts under which a claim holds on a family."""

LECTURE = "CS336 lecture 17"
"""How a claim's `source` starts when it is one of the lecture's own conclusions (`lecture`)."""

INITIAL_ENTROPY = "initial_entropy"
"""The score of the claim that checks the families start alike (`matched_entropy`)."""


class Transfer(NamedTuple):
    """One transferred claim: its claim-level verdict on each family (in the grid's order) and the column's text."""

    claim: Claim
    verdicts: dict[str, str]
    """Family -> claim-level verdict (`supported`, ...; an implementation check's `holds` / `not in every seed`)."""
    holds_on: str
    """`holds on both`, `<family> only` or `neither` (`column`)."""


def holds(verdicts: list[str], identity: bool = False) -> bool:
    """Whether a claim holds on one family, from that family's test verdicts (the module's rule).

    Raises ValueError for no verdicts (a claim-level verdict needs a test)."""
    if identity:
        if not verdicts:
            raise ValueError("a claim-level verdict needs at least one test")
        return all(v == "holds" for v in verdicts)
    return claim_verdict(verdicts) in HOLDING


def column(held: dict[str, bool]) -> str:
    """The transfer column from whether the claim holds on each family (in order): `holds on both` (or `on all`),
    `neither`, else the families it holds on, `linear only`. Raises ValueError for fewer than two families."""
    if len(held) < 2:
        raise ValueError(f"a transfer needs at least two families, got {list(held)}")
    on = [family for family, ok in held.items() if ok]
    if len(on) == len(held):
        return "holds on both" if len(held) == 2 else "holds on all"
    return f"{' and '.join(on)} only" if on else "neither"


def transfers(all_tests: list[Test]) -> list[Transfer]:
    """Every claim tested across `AXIS`, in ledger order, with its verdict per family and its transfer column
    (`all_tests`: the ledger's tests with their verdicts, `sortrl.analysis.claims.ledger`)."""
    out = []
    for claim_id in dict.fromkeys(t.claim.id for t in all_tests if t.claim.across == AXIS):
        mine = [t for t in all_tests if t.claim.id == claim_id]
        families = list(dict.fromkeys(t.setting[AXIS] for t in mine))
        identity = bool(mine[0].claim.identity)
        verdicts, held = {}, {}
        for family in families:
            here = [t.verdict for t in mine if t.setting[AXIS] == family]
            held[family] = holds(here, identity)
            if identity:
                verdicts[family] = "holds" if held[family] else "not in every seed"
            else:
                verdicts[family] = claim_verdict(here)
        out.append(Transfer(mine[0].claim, verdicts, column(held)))
    return out


def tally(found: list[Transfer]) -> Counter:
    """How many transferred claims fall in each value of the column (`holds on both`: 3, ...)."""
    return Counter(t.holds_on for t in found)


def lecture(found: list[Transfer]) -> list[Transfer]:
    """The transferred claims that are the lecture's own conclusions (their source starts with `LECTURE`; not its
    implementation checks, such as the supervised reference's)."""
    return [t for t in found if t.claim.source.startswith(LECTURE) and not t.claim.identity]


def matched_entropy(all_tests: list[Test]) -> Test | None:
    """The test of the families' initial entropies (a claim on `INITIAL_ENTROPY`), if the ledger has one."""
    return next((t for t in all_tests if t.claim.metric == INITIAL_ENTROPY and not t.claim.identity), None)
