"""The study: many runs of a grid, trained and kept on disk.

Grid files and the configurations they expand to (`grid`), sweeps that fan
chunks of runs out over processes or a Dask cluster (`sweep`), and the store
of results under `results/runs/<experiment>/` (`store`: checksummed Parquet
chunks, manifests, atomic writes).

May import: `sortrl.engine` and `sortrl.study`.
"""
