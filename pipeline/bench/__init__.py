"""`dae bench ...`: the project's benchmark commands, each a ratio against a baseline or ceiling measured in the same
run, and their CSV rows."""
