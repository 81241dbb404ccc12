"""The documentation stays true: the README is short and names the two set-up commands, every generated
table (node parameters, benchmark results, headline figures) is what its source generates, every link
and anchor resolves, and the pages name every topic, service, diagnostic key, CLI command and choice the
code has."""
from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from vlad_localization import choices
from vlad_localization.cli.main import build_parser
from vlad_localization.loop_closure import DECISIONS
from vlad_localization.ros.params import PARAMETERS

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = ("cli", "ros", "configuration", "map-format", "scores-and-evaluation", "loop-closure", "verification",
         "reliability", "architecture", "design-notes")
MARKDOWN = [README, REPO / "benchmarks" / "RESULTS.md", *(DOCS / f"{p}.md" for p in PAGES)]
RECORD_FIELDS = ("title", "benchmark", "command", "date", "machine", "commit", "source")


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_readme_is_short_and_names_the_two_set_up_commands():
    text = _text(README)
    assert len(text.splitlines()) <= 250
    makefile = _text(REPO / "Makefile")
    for target in ("demo", "test"):
        assert f"make {target}" in text
        assert re.search(rf"^{target}:", makefile, re.M), f"the README's make {target} has no Makefile target"
    for page in PAGES:
        assert f"(docs/{page}.md)" in text, f"README does not link docs/{page}.md"


def test_generated_tables_are_what_their_sources_generate():
    """docs/ros.md's parameters (params.py), benchmarks/RESULTS.md and the README's headline figures
    (benchmarks/results/*.json): run `python docs/generate.py` after changing a source."""
    expected = _module(DOCS / "generate.py", "docs_generate").generated()
    assert set(expected) == {README, REPO / "benchmarks" / "RESULTS.md", DOCS / "ros.md"}
    for path, text in expected.items():
        assert _text(path) == text, f"{path.relative_to(REPO)} is stale: run python docs/generate.py"
    ros = _text(DOCS / "ros.md")
    for p in PARAMETERS:
        assert f"| `{p.name}` | `{p.default!r}` |" in ros, p.name


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file, and its explicit <a id="...">."""
    text = _text(path)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    out = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", "")).replace(" ", "-")
        out.add(slug)
    return out


@pytest.mark.parametrize("page", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page):
    text = re.sub(r"```.*?```", "", _text(page), flags=re.S)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        assert path.exists(), f"{page.name}: {link} does not exist"
        if anchor:
            assert anchor in _anchors(path), f"{page.name}: {link}: no such anchor in {path.name}"


def test_ros_page_names_every_topic_service_and_diagnostic_key():
    ros = _text(DOCS / "ros.md")
    node = _text(REPO / "vlad_localization" / "ros" / "node.py")
    names = set(re.findall(r'"(~/[a-z_]+)"', node))
    assert {"~/candidates", "~/loop_closure", "~/save_map", "~/reload_map", "~/pose"} <= names
    for name in names:
        assert f"`{name}`" in ros, name
    diagnostics = _text(REPO / "vlad_localization" / "ros" / "diagnostics.py") + node
    keys = set(re.findall(r'values\[f?"([a-z_]+)', diagnostics)) - {"verification"}  # a config value, not a key
    assert {"processed", "rejected", "decisions", "latency_", "last_error", "map_size"} <= keys
    for key in keys:
        assert f"`{key}" in ros, key
    for status in DECISIONS:
        assert f"`{status}`" in ros, status


def test_cli_page_names_every_command_and_scores_page_every_decision():
    cli = _text(DOCS / "cli.md")
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert len(sub.choices) >= 10
    for command in sub.choices:
        assert f"`{command}`" in cli, command
    scores = _text(DOCS / "scores-and-evaluation.md")
    for status in DECISIONS:
        assert f"| `{status}` |" in scores, status
    config = _text(DOCS / "configuration.md")
    for table in (choices.MODES, choices.FUSIONS, choices.BACKBONES, choices.MATCHERS, choices.EVICTIONS,
                  choices.RANSAC_BACKENDS):
        for name in table:
            assert f"`{name}`" in config, name


def test_benchmark_records_say_when_where_and_how():
    records = sorted((REPO / "benchmarks" / "results").glob("*.json"))
    assert len(records) >= 10
    for path in records:
        rec = json.loads(_text(path))
        for field in RECORD_FIELDS:
            assert rec.get(field), f"{path.name} lacks {field}"
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", rec["date"]), path.name
        assert ("rows" in rec) != ("output" in rec), f"{path.name}: a table or a script's output, not both"
        if "rows" in rec:
            assert all(len(row) == len(rec["columns"]) for row in rec["rows"]), path.name


def test_fusion_record_is_the_fit_of_the_shipped_presets():
    """The recall and acceptance figures belong to the coefficients and threshold the presets ship."""
    output = json.loads(_text(REPO / "benchmarks" / "results" / "fit_fusion.json"))["output"]
    for preset in ("performance", "speed", "storage"):
        data = yaml.safe_load(_text(REPO / "config" / f"{preset}.yaml"))
        assert data["matching"]["fusion_model"] == output["model"], preset
        assert data["loop_closure"]["score_threshold"] == output["threshold_at_99_precision"], preset
