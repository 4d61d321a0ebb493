"""One set of settings and one command-line dialect: the library's defaults are the CLI's, every
command that builds methods takes --methods and --param METHOD.KEY=VALUE, fixed choices are choices."""
from dataclasses import asdict, fields

import click
import pytest

from attnbench import cli
from attnbench.settings import Execution, FitSettings, Inputs, Shape, SweepConfig

METHOD_COMMANDS = ("sweep", "check", "profile", "model", "drift")


def parsed(command: str, args: list[str]) -> dict:
    cmd = cli.cli.commands[command]
    return cmd.make_context(command, list(args)).params


def test_the_library_sweep_is_the_command_lines_sweep_on_cpu(monkeypatch):
    monkeypatch.delenv("ATTNBENCH_EXECUTOR", raising=False)
    ctx = cli.sweep_cmd.make_context("sweep", ["--methods", "anchor,uniform", "--device", "cpu"])
    p = ctx.params
    with ctx:
        got = cli.sweep_config(
            p["n_spec"], p["m_spec"], p["methods_spec"],
            cli.shape_settings(p["device"], p["dtype"], p["batch"], p["heads"], p["head_dim"]), p["mode"],
            cli.inputs_settings(p["workload"], p["seed"], p["fit"], p["fit_iters"], p["fit_steps"], p["fit_lr"]),
            p["param_items"], p["out"], p["min_run_time"], p["timeout_s"], p["no_flops"], p["cuda_graphs"],
            {k: p[k] for k in ("executor", "workers", "point_timeout_s", "worker_mem_limit", "retry_failed",
                               "ray_address")})
    library = SweepConfig(methods=("anchor", "uniform"))
    assert got == library, {f.name: (getattr(got, f.name), getattr(library, f.name)) for f in fields(SweepConfig)
                            if getattr(got, f.name) != getattr(library, f.name)}
    assert (library.workload, library.fit, library.executor, library.ms) == ("image", "closed", "process", (10, 30, 100))


def test_each_group_declares_its_defaults_once(monkeypatch):
    monkeypatch.delenv("ATTNBENCH_EXECUTOR", raising=False)
    sweep, profile, drift = parsed("sweep", []), parsed("profile", ["--n", "16"]), parsed("drift", ["--model", "x"])
    for name, value in asdict(Shape()).items():
        if name not in ("device", "dtype"):       # resolved on the machine: best device, its dtype
            assert sweep[name] == profile[name] == value, name
    for name, value in asdict(FitSettings()).items():
        assert sweep[name] == drift[name] == value, name
    for name in ("workload", "seed", "fit"):
        assert sweep[name] == getattr(Inputs(), name)
    assert sweep["executor"] == Execution().executor
    from attnbench.profiling import ProfileConfig

    assert {f.name for f in fields(Shape)} <= {f.name for f in fields(ProfileConfig)}


@pytest.mark.parametrize("command", METHOD_COMMANDS)
def test_commands_that_build_methods_speak_one_dialect(command):
    params = {p.name: p for p in cli.cli.commands[command].params}
    assert params["methods_spec"].opts == ["--methods"] and not params["methods_spec"].hidden
    assert params["alias_method"].hidden and params["alias_attention"].hidden
    if command != "check":     # the gate measures its suite's own parameters (its baseline file)
        assert params["param_items"].metavar == "METHOD.KEY=VALUE"


@pytest.mark.parametrize("command,old", [("profile", "--method"), ("model", "--attention"), ("drift", "--attention")])
def test_old_spellings_stay_accepted(command, old):
    extra = {"profile": ["--n", "16"], "drift": ["--model", "x"], "model": []}[command]
    assert parsed(command, extra + [old, "anchor"])["alias_" + old.strip("-")] == "anchor"


def test_fixed_choices_are_click_choices():
    for command in ("sweep", "profile", "model", "drift", "list", "check", "env"):
        for p in cli.cli.commands[command].params:
            if p.name in ("device", "dtype", "mode", "executor") or (p.name == "fit" and command == "sweep"):
                assert isinstance(p.type, click.Choice), (command, p.name)


def test_version(capsys):
    from attnbench import __version__

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"attnbench {__version__}"


def test_package_names_stay_importable():
    import attnbench

    for name in ("create", "register", "list_methods", "load_frame", "get_info", "load_plugin"):
        assert callable(getattr(attnbench, name))
    with pytest.raises(AttributeError):
        attnbench.nosuch  # noqa: B018


def test_model_takes_method_qualified_and_bare_params():
    from attnbench.models.cli import model_configs

    both = model_configs("deit-tiny", ("anchor", "vanilla-math"), 32, "4", ["anchor.shared=true"], "cpu", 1, 1,
                         False, cli.BadInput)
    assert {c.attention: c.params for c in both} == {"anchor": {"shared": True}, "vanilla-math": {}}
    bare = model_configs("deit-tiny", ("anchor",), 32, "4", ["shared=true"], "cpu", 1, 1, False, cli.BadInput)
    assert bare[0].params == {"shared": True}


def test_closed_fit_asks_a_file_for_its_fitting_split_only_for_fittable_methods(tmp_path, capsys):
    """Methods without learnable state run on a file without q_fit; anchor (a closed-form fit) is refused."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    path = tmp_path / "nofit.safetensors"
    save_file({name: torch.randn(1, 2, 16, 8, generator=gen) for name in ("q", "k", "v")}, str(path))
    common = ["sweep", "--workload", f"file:{path}", "--m", "4", "--min-run-time", "0.01", "--no-flops", "--quiet",
              "--executor", "inline"]
    assert cli.main(common + ["--methods", "vanilla-math,uniform,linear", "--out", str(tmp_path / "a")]) == 0
    assert capsys.readouterr().out.startswith("3 rows written")
    assert cli.main(common + ["--methods", "anchor", "--out", str(tmp_path / "b")]) == 2
    assert "q_fit" in capsys.readouterr().err
