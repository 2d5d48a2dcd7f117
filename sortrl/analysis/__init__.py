"""The analysis: from stored runs to numbers with intervals and verdicts.

`experiment` loads one experiment's stored runs once and scores them (one
table: configuration, seed, every score); `scores` defines the per-run scores,
`stats` and `verdicts` are pure functions of score arrays, `findings` holds an
experiment's comparisons as data and `claims` tests the ledger's claims.

May import: `sortrl.engine`, `sortrl.study` (the store and the grid) and
`sortrl.analysis`. Nothing here writes a file.
"""
