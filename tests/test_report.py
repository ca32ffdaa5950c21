"""The HTML report's text: what users typed or named reaches the page as text, never as markup."""

import json
import re
import shutil

import yaml

from featinv.report import build_report

EVIL = '<i class="x">&amp;</i>'
SAFE = "&lt;i class=&quot;x&quot;&gt;&amp;amp;&lt;/i&gt;"


def _hostile_run(tiny_run, tmp_path):
    """A copy of the tiny run whose weights label and layer name (in summary.json) and notes
    (in config.yaml) carry markup."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    s = json.loads((run / "summary.json").read_text())
    s["backbone"]["weights"] = f"w{EVIL}"
    s["layers"] = [f"layer1{EVIL}"]
    s["strides"] = {s["layers"][0]: 4}
    (run / "summary.json").write_text(json.dumps(s))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["notes"] = [f"note {EVIL}"]
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    return run


def _section(text, start, end):
    return text[text.index(start):text.index(end, text.index(start))]


def test_the_facts_table_the_results_cells_and_the_run_paragraph_escape_what_they_show(tiny_run, tmp_path):
    page = tmp_path / "r.html"
    build_report([_hostile_run(tiny_run, tmp_path)], page)
    text = page.read_text()
    assert "<i " not in text and "</i>" not in text  # no markup of ours anywhere on the page
    facts = _section(text, "<h2>What was run</h2>", "</table>")
    assert f"note {SAFE}" in facts and f"w{SAFE}" in facts
    results = _section(text, "<h2>Results</h2>", "</table>")
    cells = re.findall(r"<td>(.*?)</td>", results)
    assert f"resnet50 (w{SAFE})" in cells and f"layer1{SAFE}" in cells
    paragraph = next(p for p in re.findall(r"<p>(.*?)</p>", text, re.S) if "held-out images" in p)
    assert f"<b>resnet50 (w{SAFE}), layer1{SAFE}</b> (layers layer1{SAFE}," in paragraph
