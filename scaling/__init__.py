"""postformer.scaling: from a study spec to a verdict.

    study.py       the spec (YAML) and its plan: LR tuning, IsoFLOP budgets on a size ladder,
                   seeds, evaluation points
    runner.py      `postformer study`: lays out run folders, trains in stages (in process or
                   --jobs N workers), --plan / --list
    throughput.py  the time estimates of --plan (a short measured probe)
    results.py     run folders -> results.csv and curves.csv
    table.py       reading a results.csv (any table with arch, N, D, C, loss)
    analysis.py    IsoFLOP minima, loss gaps, efficiency factors, exponent test, bootstrap
    report.py      `postformer report`: report.json, report.md, report.html, figures
    compare.py     `postformer compare`: a one-size study of fit configs
    fit.py         Chinchilla's Approach 3 (and 2) for any table
"""
