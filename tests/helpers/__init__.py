"""Helpers of the tests (and of the benchmark scripts, which put tests/ on sys.path): ``helpers.configs``
(compose the Hydra configs), ``helpers.tiny`` (the one tiny model), ``helpers.datasets`` (tiny datasets in the
official layouts, batches), ``helpers.evaluation`` (fake predictors and staging for the evaluation writers),
``helpers.kill`` (a callback that kills its training process), ``helpers.runs`` (real train.py runs: their
processes, the shared two-process DDP run, what a run leaves), ``fake_sbatch.py`` (a stand-in for SLURM's
sbatch)."""
