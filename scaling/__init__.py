"""postformer.scaling: from a spec to a verdict, in four rooms in the order data flows.

    spec/     study and probe YAML -> validated, frozen specs that hold their models
    run/      the runs: plan, run folders, executors, --plan estimates, results.csv
    fit/      results.csv -> IsoFLOP minima, scaling laws, efficiency factors, intervals
    report/   report.json, Markdown, HTML, figures; the probe report
    cli.py    the commands (study, probe, compare, report): spec -> run -> report
    numbers.py  every number formatter (reports, plans, progress lines)

Imports run one way: spec <- run <- report, fit <- run and report; cli.py above all.
Each room's ``__init__`` names its public surface; no module imports another room's
private names (``tests/scaling/test_layout.py`` checks both, and that there is no circle).
"""
