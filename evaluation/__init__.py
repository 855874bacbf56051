"""Agreement with expert (or phantom) masks: overlap and surface metrics, D100 agreement statistics, and the
``vbmd-rt eval`` report. numpy and scipy only (no torch): it runs wherever the runtime runs."""
