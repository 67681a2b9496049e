"""postformer.train.probes: synthetic probe tasks (MQAR, the MAD suite) for the LM trainer.

    tasks.py       the task registry and API: settings with the papers' defaults and
                   difficulty sweeps, generate, make_split (fixed train/test sets), model_vocab
    generators.py  each task's settings check and vectorised example generator
    data.py        ProbeDataModule: a task's sets as batches of (inputs, targets), answers scored
"""
