"""The README and docs/: the methods table equals the registry's, and every relative link resolves."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from attnbench import registry

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "results").glob("*/NOTES*.md"))]
PENDING: set[str] = set()  # pages a link may name before they exist (none today)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def between(text: str, name: str) -> str:
    found = re.search(rf"<!-- {name}:begin -->\n(.*?)\n<!-- {name}:end -->", text, re.S)
    assert found, f"README lacks the {name} markers"
    return found.group(1).strip()


def test_the_readme_methods_table_is_the_generated_one():
    table = between((ROOT / "README.md").read_text(encoding="utf-8"), "methods")
    assert table == registry.markdown_table().strip(), \
        "README's methods table is stale: run `python -m attnbench.methods` and paste it between the markers"
    for info in registry.list_methods():   # every built-in method has its line
        if registry.get_info(info["name"]).cls.__module__.startswith("attnbench.methods."):
            assert f"| `{info['name']}` |" in table, info["name"]


def test_the_generated_table_leaves_plugins_out(tmp_path):
    plugin = tmp_path / "extra_method.py"
    plugin.write_text("import torch, attnbench\n"
                      "@attnbench.register('docs-test-extra', family='x', replace=True)\n"
                      "class Extra(torch.nn.Module):\n"
                      "    def __init__(self, heads, head_dim):\n"
                      "        super().__init__()\n")
    before = registry.markdown_table()
    registry.load_plugin(str(plugin))
    try:
        assert "docs-test-extra" in {m["name"] for m in registry.list_methods()}
        assert registry.markdown_table() == before
    finally:
        registry._REGISTRY.pop("docs-test-extra", None)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {slug(h) for h in re.findall(r"(?m)^#{1,6} (.+)$", text)}


def links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans are not links ([`x`](y) keeps its target)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_slug_matches_github():
    assert slug("`sweep --cuda-graphs`") == "sweep---cuda-graphs"
    assert slug("Executors: isolated workers, every GPU, Ray") == "executors-isolated-workers-every-gpu-ray"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert page.read_text(encoding="utf-8")
    broken = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
        if rel in PENDING:
            continue
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor})")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_readme_is_a_short_guide_that_keeps_the_two_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    main_job, tests = re.findall(r"```bash\n(.*?)\n```", text, re.S)[:2]
    venv = "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
    assert main_job == venv + "pip install -e . && python bench.py sweep && python bench.py report"
    assert tests == venv + 'pip install -e ".[test]" && python -m pytest -q'
    # measurement logs (commit hashes, load averages, dated figures) live under results/, not here
    assert not re.search(r"`[0-9a-f]{7,40}`|load average|\b20\d\d-\d\d-\d\d\b", text.split("## Measurements")[0])
