"""Package layout that pyproject.toml cannot express: the published tables in baselines/paper/
ship inside the package as ``attnbench.paper_tables`` (read with importlib.resources)."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["attnbench*"]) + ["attnbench.paper_tables"],
    package_dir={"attnbench.paper_tables": "baselines/paper"},
    package_data={"attnbench.paper_tables": ["*.csv", "README.md"], "attnbench.capture": ["data/*.txt"],
                  "attnbench": ["kit_run.sh"]},
)
