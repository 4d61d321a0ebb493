"""scripts/fidelity.py: every parameterised method has a row, and the comparison sees the rules' reach."""
import importlib.util
import inspect
import sys
from pathlib import Path

from attnbench.registry import get_info

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fidelity.py"


def _script():
    spec = importlib.util.spec_from_file_location("fidelity_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod                                    # dataclasses look the module up
    spec.loader.exec_module(mod)
    return mod


def test_every_case_switches_one_registered_parameter():
    script = _script()
    methods = [case.method for case in script.CASES]
    assert sorted(methods) == sorted(set(methods))                 # one row per method
    for case in script.CASES:
        (name, value), = case.other.items()
        assert name in get_info(case.method).defaults
        assert get_info(case.method).defaults[name] != value
        assert name in inspect.signature(get_info(case.method).cls).parameters


def test_window_rules_differ_on_a_short_grid_only():
    script = _script()
    case = next(c for c in script.CASES if c.method == "window")
    assert script.compare(case, (7, 14), 3.0)["diff"] > 0.1
    same = script.compare(case, (14, 14), 3.0)
    assert same["diff"] == 0 and same["rows"] == 0
