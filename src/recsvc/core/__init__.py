"""The pure core: formulas and rules over plain numbers and arrays; no I/O of any kind."""
