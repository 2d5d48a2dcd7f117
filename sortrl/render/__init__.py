"""The renderers: from findings to the files a reader opens.

Figures (`figures`, `claim_figures`), generated sentences (`sentences`), the
writers of REPORT.md (`report`), CLAIMS.md (`claims_md`) and the README's
generated blocks (`readme`), and `publish`, the report stage's entry point that
loads every experiment and writes every output.

May import: every folder below (`sortrl.engine`, `sortrl.study`,
`sortrl.analysis`) and `sortrl.render`.
"""
