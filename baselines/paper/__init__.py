"""The published tables (CSV files beside this one), installed as attnbench.paper_tables."""
