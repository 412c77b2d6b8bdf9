"""Pure billing rules: no I/O, no framework imports, only the standard library."""
