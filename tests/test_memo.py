"""`sortrl.analysis.memo.by_value`: a repeated statistic is the stored one, bit for bit; other arguments are not."""

import numpy as np

from sortrl.analysis import memo, stats, verdicts


def test_equal_arguments_compute_once_and_give_the_same_numbers():
    calls = []

    @memo.by_value
    def spread(values, seed=0, scale=1.0):
        calls.append(seed)
        return np.asarray(values).std() * scale + seed, np.asarray(values) * scale

    x = np.array([1.0, 2.0, 4.0])
    first = spread(x, 0)
    again = spread(x.copy(), seed=0, scale=1.0)  # equal values, a default given by name: the same call
    assert calls == [0]
    assert first[0] == again[0] and np.array_equal(first[1], again[1])
    again[1][0] = 99.0  # a caller's writes do not reach the store
    assert spread(x)[1][0] == 1.0
    spread(x, 1)
    spread(x.astype(np.float32))  # another dtype, another key
    spread(np.array([1.0, 2.0, 5.0]))
    spread(x[None])  # another shape
    assert calls == [0, 1, 0, 0, 0]


def test_the_report_statistics_are_memoised_and_unchanged():
    d = np.random.default_rng(3).normal(0.1, 1.0, 32)
    verdicts.signflip_p.cache_clear()
    stats.bootstrap_ci.cache_clear()
    p = verdicts.signflip_p(d, "greater")
    assert verdicts.signflip_p(d, alternative="greater", null=0.0) == p
    assert verdicts.signflip_p.__wrapped__(d, "greater") == p  # the uncached function gives the same number
    ci = stats.bootstrap_ci([d], stats.mean, 0)
    assert stats.bootstrap_ci([d.copy()], stats.mean, seed=0) == ci == stats.bootstrap_ci.__wrapped__([d], stats.mean)
    assert verdicts.signflip_p(d, "less") != p
