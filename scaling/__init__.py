"""postformer.scaling: from a study spec to a verdict.

    study.py       the spec (YAML) and its validation
    plan.py        the size ladder, the models, and the runs: LR tuning sweeps, IsoFLOP
                   trajectories with their cooldowns, seeds, evaluation points
    runner.py      `postformer study`: lays out run folders, trains in stages (in process or
                   --jobs N workers), --plan / --list
    executors.py   where runs train (in process, submitit local / Slurm jobs) and the spec's
                   executor section
    locks.py       the study and run folder locks
    throughput.py  --plan: every run with its time estimate (a short measured probe)
    results.py     run folders -> results.csv and curves.csv
    table.py       reading a results.csv (any table with arch, N, D, C, loss)
    lr.py          LR sweeps: the best LR per arch and size (a parabola in log LR)
    isoflop.py     one IsoFLOP group's minimum (a parabola in log N)
    curvefit.py    the joint and free curve fits across archs (Levenberg-Marquardt, starts)
    analysis.py    the verdict: minima, loss gaps, efficiency factors, exponent test,
                   the wild cluster bootstrap around all of them
    document.py    number formatting and the markdown / HTML renderers
    figures.py     the report's figures (matplotlib)
    report_json.py report.json: the analysis as strict JSON
    report.py      `postformer report`: report.json, report.md, report.html, figures
    probe.py       `postformer probe`: synthetic probes (MQAR, MAD) over archs x tasks x widths
                   x LRs, trained through the executors like a study's runs
    probe_report.py  the probe report (best-LR scores, MAD score, heat maps) and the
                   probe scores beside a study's verdict (`postformer report --probes`)
    compare.py     `postformer compare`: a one-size study of fit configs
    fit.py         Chinchilla's Approach 3 (and 2) for any table
"""
