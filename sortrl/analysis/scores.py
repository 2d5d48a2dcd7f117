"""Per-run scores: what a run's per-epoch metrics reduce to (one number per run), for summaries and claims.

Each entry of `SCORES` names the metric columns it reads (glob patterns, so a
score may read every `abs_delta/prompt=*` column a run has) and reduces the
rows of many runs at once: `reduce(rows)` takes one row per (run, epoch)
with a `run` column (an integer per run), `epoch` and the metrics, and returns
a Series indexed by `run`. A score whose metrics a run lacks is NaN for it.
`sortrl.analysis.experiment` computes the scores while it reads the stored chunks.

The final-value convention is rliable's and the lecture's: a run's *final*
value of a metric is its mean over the last `stats.FINAL_FRACTION` (10%) of
the epochs where it was measured.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pandas as pd

from sortrl.analysis import stats

LATE_FRACTION = 0.2
"""`reward_volatility` looks at the last 20% of a run's epochs."""


class Score(NamedTuple):
    """A per-run score: its metrics, how it reduces them, what it means and its unit."""

    metrics: tuple[str, ...]
    """Metric columns read (glob patterns); the score is computed where every one is present."""
    reduce: Callable[[pd.DataFrame], pd.Series]
    doc: str
    unit: str
    optional: tuple[str, ...] = ()
    """Metric columns read when present (a run that lacks one has its default, as `reduce` says)."""
    bounds: tuple[float | None, float | None] = (None, None)
    """The lowest and highest value the score can take whatever the configuration (None: unbounded on that side, or
    a bound that depends on the configuration, such as a reward's chance level): a share is in [0, 1], a spread or
    an entropy is at least 0. The ledger flags a verdict of no difference between sides that all sit within one
    margin of the same bound (`sortrl.analysis.claims.at_bound`)."""


def _final(metric: str, fraction: float = stats.FINAL_FRACTION) -> Callable[[pd.DataFrame], pd.Series]:
    def reduce(rows: pd.DataFrame) -> pd.Series:
        return stats.final_scores(rows, metric, fraction=fraction, by="run")

    return reduce


def _difference(a: str, b: str) -> Callable[[pd.DataFrame], pd.Series]:
    def reduce(rows: pd.DataFrame) -> pd.Series:
        return _final(a)(rows).sub(_final(b)(rows))

    return reduce


def _initial(metric: str) -> Callable[[pd.DataFrame], pd.Series]:
    """A run's value of `metric` at its first epoch (measured on the untrained policy's samples)."""

    def reduce(rows: pd.DataFrame) -> pd.Series:
        measured = rows[rows[metric].notna()]
        return measured.loc[measured.groupby("run")["epoch"].idxmin()].set_index("run")[metric]

    return reduce


def _late_std(metric: str) -> Callable[[pd.DataFrame], pd.Series]:
    def reduce(rows: pd.DataFrame) -> pd.Series:
        first = rows.groupby("run")["epoch"].transform("max") * (1 - LATE_FRACTION)
        late = rows[rows["epoch"] >= first]
        return late.groupby("run")[metric].std(ddof=1)

    return reduce


def _log_mean_square(metric: str) -> Callable[[pd.DataFrame], pd.Series]:
    def reduce(rows: pd.DataFrame) -> pd.Series:
        return np.log((rows[metric] ** 2).groupby(rows["run"]).mean())

    return reduce


def _reward_per_sample(rows: pd.DataFrame) -> pd.Series:
    """Per run: the mean reward over the first N groups it sampled per prompt, N = its number of epochs (the budget
    of a run that draws one group per epoch); an epoch's groups (`num_gen_batches`, 1 where absent) count with the
    epoch's mean reward, the last one in part."""
    rows = rows.sort_values(["run", "epoch"], kind="stable")
    drawn = rows["num_gen_batches"].fillna(1.0) if "num_gen_batches" in rows else pd.Series(1.0, index=rows.index)
    budget = rows.groupby("run")["epoch"].transform("size").astype(float)
    before = drawn.groupby(rows["run"]).cumsum() - drawn
    weight = (budget - before).clip(lower=0.0).clip(upper=drawn)
    weighted = (weight * rows["mean_reward"]).groupby(rows["run"]).sum()
    return weighted / weight.groupby(rows["run"]).sum()


def _mean_over_training(metric: str) -> Callable[[pd.DataFrame], pd.Series]:
    def reduce(rows: pd.DataFrame) -> pd.Series:
        return rows.groupby("run")[metric].mean()

    return reduce


STUCK_ENTROPY = 0.1
"""Below this final entropy (nats) a run's policy is nearly deterministic: `stuck` if it also stopped improving."""


def _stuck(rows: pd.DataFrame) -> pd.Series:
    """1 when a run ends at a partial-credit fixed point, else 0: the greedy policy sorts some but not all training
    prompts, its greedy accuracy did not change over the last 20% of epochs, and its final entropy is below 0.1 nats."""
    first = rows.groupby("run")["epoch"].transform("max") * (1 - LATE_FRACTION)
    late = rows[rows["epoch"] >= first].groupby("run")
    accuracy = late["greedy_accuracy"]
    constant = accuracy.max() == accuracy.min()
    partial = accuracy.last() < 1
    calm = _final("entropy")(rows) < STUCK_ENTROPY
    return (constant & partial & calm).astype(float)


def _spread_slope(rows: pd.DataFrame) -> pd.Series:
    """Per run: least-squares slope of log mean|delta| on log reward std, over (prompt, epoch) with a spread."""
    weights = sorted(c for c in rows if c.startswith("abs_delta/prompt="))
    spreads = [c.replace("abs_delta/", "reward_std/") for c in weights]
    if not weights or not all(s in rows for s in spreads):
        return pd.Series(dtype=float)
    w = rows[weights].to_numpy(dtype=float)
    s = rows[spreads].to_numpy(dtype=float)
    run = np.repeat(rows["run"].to_numpy(), len(weights))
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero spread or weight is left out (not finite)
        x, y = np.log(s.ravel()), np.log(w.ravel())
    ok = np.isfinite(x) & np.isfinite(y)
    table = pd.DataFrame({"run": run[ok], "x": x[ok], "y": y[ok]})
    if table.empty:
        return pd.Series(dtype=float)
    centred = table.assign(
        x=table["x"] - table.groupby("run")["x"].transform("mean"),
        y=table["y"] - table.groupby("run")["y"].transform("mean"),
    )
    sums = centred.assign(xy=centred["x"] * centred["y"], xx=centred["x"] ** 2).groupby("run")[["xy", "xx"]].sum()
    return (sums["xy"] / sums["xx"].where(sums["xx"] > 0)).rename("spread_slope")


def _easy_minus_hard(rows: pd.DataFrame) -> pd.Series:
    """Per run of a mixed-length prompt set: final greedy accuracy on its shortest prompts minus on its longest.

    Reads the per-length columns `greedy_accuracy/len=<n>` (the last epoch's, as `final_greedy_accuracy`); NaN for
    a run with one prompt length. Paired by seed, config A's value minus config B's is A's gain over B on the short
    (easy) prompts minus its gain on the long (hard) ones: where A puts its learning, prompt by difficulty.
    """
    columns = sorted((c for c in rows if c.startswith("greedy_accuracy/len=")), key=lambda c: int(c.split("=")[1]))
    if len(columns) < 2:
        return pd.Series(dtype=float)
    return _final(columns[0], 0)(rows).sub(_final(columns[-1], 0)(rows)).rename("easy_minus_hard_accuracy")


SHARE = (0.0, 1.0)
"""The bounds of a share (or a 0/1 score): 0 and 1."""

POSITIVE = (0.0, None)
"""The bounds of a score that cannot be negative (a spread, an entropy, a KL, a length): 0 and none above."""

SCORES: dict[str, Score] = {
    "final_reward": Score(("mean_reward",), _final("mean_reward"), "mean reward over the last 10% of epochs", "reward"),
    "final_greedy_accuracy": Score(
        ("greedy_accuracy",),
        _final("greedy_accuracy", 0),
        "share of training prompts the greedy policy sorts",
        "share",
        bounds=SHARE,
    ),
    "solved": Score(
        ("solve_rate",),
        _final("solve_rate", 0),
        "1 if the greedy policy sorts every training prompt, else 0",
        "0/1",
        bounds=SHARE,
    ),
    "stuck": Score(
        ("greedy_accuracy", "entropy"),
        _stuck,
        "1 if the run ends at a partial-credit fixed point (greedy accuracy below 1 and unchanged over the last 20% of "
        "epochs, entropy below 0.1 nats), else 0",
        "0/1",
        bounds=SHARE,
    ),
    "final_exact_rate": Score(
        ("exact_rate",),
        _final("exact_rate"),
        "share of sampled responses exactly sorted (last 10%)",
        "share",
        bounds=SHARE,
    ),
    "final_entropy": Score(
        ("entropy",), _final("entropy"), "entropy of the sampling policy (last 10%)", "nats", bounds=POSITIVE
    ),
    "initial_entropy": Score(
        ("entropy",),
        _initial("entropy"),
        "entropy of the untrained sampling policy (first epoch), per response token",
        "nats",
        bounds=POSITIVE,
    ),
    "final_loss": Score(("loss",), _final("loss"), "the loss (last 10%)", "loss"),
    "final_kl": Score(("kl",), _final("kl"), "KL to the reference (last 10%)", "nats", bounds=POSITIVE),
    "final_response_length": Score(
        ("response_length",), _final("response_length"), "response length (last 10%)", "tokens", bounds=POSITIVE
    ),
    "initial_response_length": Score(
        ("response_length",),
        _initial("response_length"),
        "response length of the untrained policy (first epoch)",
        "tokens",
        bounds=POSITIVE,
    ),
    "length_gap": Score(
        ("response_length/below_mean", "response_length/above_mean"),
        _difference("response_length/below_mean", "response_length/above_mean"),
        "length of below-group-mean responses minus that of above-mean ones (last 10%)",
        "tokens",
    ),
    "length_weighting": Score(
        ("response_length/loss_weighted", "response_length"),
        _difference("response_length/loss_weighted", "response_length"),
        "loss-weighted minus plain mean response length (last 10%): how much the loss favours long responses",
        "tokens",
    ),
    "reward_volatility": Score(
        ("mean_reward",),
        _late_std("mean_reward"),
        "std over the last 20% of epochs of the epoch's mean reward",
        "reward",
        bounds=POSITIVE,
    ),
    "reward_per_sample": Score(
        ("mean_reward",),
        _reward_per_sample,
        "mean reward over the first N groups sampled per prompt, N = the run's epochs (reward per sampled response "
        "at the budget of one group per epoch)",
        "reward",
        optional=("num_gen_batches",),
    ),
    "greedy_volatility": Score(
        ("greedy_accuracy",),
        _late_std("greedy_accuracy"),
        "std over the last 20% of epochs of the greedy policy's accuracy (the policy itself, without sampling noise)",
        "share",
        bounds=POSITIVE,
    ),
    "grad_norm_log": Score(
        ("grad_norm",),
        _log_mean_square("grad_norm"),
        "log of the mean squared gradient norm over training: E|g|^2 = |E g|^2 + the gradient's variance",
        "log",
    ),
    "reward_auc": Score(
        ("mean_reward",),
        _mean_over_training("mean_reward"),
        "mean reward over all epochs (area under the curve)",
        "reward",
    ),
    "spread_slope": Score(
        ("abs_delta/prompt=*", "reward_std/prompt=*"),
        _spread_slope,
        "slope of log mean |delta| on log reward std across prompts and epochs (1: weight follows spread; 0: none)",
        "slope",
    ),
    "easy_minus_hard_accuracy": Score(
        ("greedy_accuracy/len=*",),
        _easy_minus_hard,
        "greedy accuracy on the shortest prompts minus on the longest (a mixed-length prompt set; last epoch)",
        "share",
        bounds=(-1.0, 1.0),
    ),
    "final_eval/mean_reward": Score(
        ("eval/mean_reward",), _final("eval/mean_reward"), "held-out mean reward (last 10% of evaluations)", "reward"
    ),
    "final_eval/greedy_accuracy": Score(
        ("eval/greedy_accuracy",), _final("eval/greedy_accuracy", 0), "held-out greedy accuracy", "share", bounds=SHARE
    ),
}
"""Every per-run score, by name (also the names a claim's `metric` may use)."""

DERIVED = {
    "final_score": "final reward, chance-normalised: (final reward - uniform policy's) / (best - uniform policy's)"
}
"""Scores `sortrl.analysis.experiment` derives from a score and the configuration (not from the rows alone)."""

DERIVED_BOUNDS = {"final_score": (0.0, 1.0)}
"""A derived score's bounds (as `Score.bounds`): the final score's 0 is chance (a policy that learned nothing; a run
can score below it, rarely and by little) and its 1 the best possible."""


def bounds(name: str) -> tuple[float | None, float | None]:
    """The bounds of score `name` (`Score.bounds`, `DERIVED_BOUNDS`); `(None, None)` for any other name."""
    if name in SCORES:
        return SCORES[name].bounds
    return DERIVED_BOUNDS.get(name, (None, None))


def patterns(names: list[str]) -> list[str]:
    """The metric columns the scores `names` read, as glob patterns (`sortrl.study.store.read_rows` resolves them)."""
    return list(dict.fromkeys(p for name in names for p in (*SCORES[name].metrics, *SCORES[name].optional)))


def compute(names: list[str], rows: pd.DataFrame) -> pd.DataFrame:
    """The scores `names` of the runs in `rows` (one row per run and epoch, a `run` column): [run] x [name]."""
    out = {}
    for name in names:
        score = SCORES[name]
        if all(any(fnmatch.fnmatchcase(c, p) for c in rows) for p in score.metrics):
            out[name] = score.reduce(rows)
    index = pd.Index(np.unique(rows["run"].to_numpy()), name="run")
    return pd.DataFrame({k: v.reindex(index) for k, v in out.items()}, index=index)
