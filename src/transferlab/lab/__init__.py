"""The strategy lab: compare strategies, search hyper-parameters, cross-validate (all on top of pipeline)."""
