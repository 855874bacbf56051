"""Benchmarks (``vbmd-rt bench`` runs ``suite``; the other modules are scripts: ``python bench/NAME.py``)."""
