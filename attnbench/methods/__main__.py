"""python -m attnbench.methods: print the README's methods table, generated from the registry."""
from attnbench.registry import markdown_table

print(markdown_table())
