"""Synthetic HR-pQCT hand phantoms with exact MC2 truth (``vbmd-rt synth``)."""
