"""Commands besides training: audit (and its replay), report, simulate, prepare."""
