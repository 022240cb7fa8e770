"""The report and the comparison page in a real browser (headless Chromium through Selenium): the
sections render, every figure loads (results of every arm, curriculum phases, budget, clusters,
training loss of every arm), the token-weight view shows more than one shade, and the report's
link to its comparison opens. `.ci/run` installs Chromium and sets KPOD_REQUIRE_BROWSER=1, so there
the test cannot be skipped; elsewhere it is skipped when Chromium, chromedriver or selenium is missing."""

import json
import os
import shutil

import pytest

from kpod.cli import main

PAGE_FACTS = """
return {
  title: document.title,
  sections: [...document.querySelectorAll('h2')].map(h => h.textContent),
  images: [...document.images].map(i => ({alt: i.alt, loaded: i.complete && i.naturalWidth > 0})),
  shades: new Set([...document.querySelectorAll('span.w')].map(s => getComputedStyle(s).backgroundColor)).size,
  links: [...document.querySelectorAll('a')].map(a => a.href),
  rendered_height: document.body.scrollHeight,
};
"""


def _chromium():
    browser = next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
    missing = [
        name for name, found in (("chromium", browser), ("chromedriver", driver), ("selenium", webdriver)) if not found
    ]
    if missing:
        message = (
            f"no headless browser: {', '.join(missing)} missing (Debian: apt-get install chromium chromium-driver)"
        )
        if os.environ.get("KPOD_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_report_and_comparison_render_in_chromium(finished_tiny_run, tmp_path):
    source, _ = finished_tiny_run
    kpod_run, baseline = tmp_path / "kpod", tmp_path / "std-cot"
    shutil.copytree(source, kpod_run)
    shutil.copytree(source, baseline)
    config = baseline / "configs/train.yaml"
    config.write_text(config.read_text().replace("method: kpod", "method: std-cot"))
    predictions = baseline / "eval/test/predictions.jsonl"  # another run answers the first question otherwise
    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    rows[0]["correct"] = not rows[0]["correct"]
    predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics_file = baseline / "eval/test/metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["accuracy"], metrics["rationale_loss"]["mean"] = 50.0, 4.25
    metrics_file.write_text(json.dumps(metrics))
    assert main(["compare", str(kpod_run), str(baseline), "--html", str(tmp_path / "compare.html")]) == 0
    assert main(["report", str(kpod_run)]) == 0

    browser = _chromium()
    try:
        browser.get((kpod_run / "report.html").as_uri())
        report = browser.execute_script(PAGE_FACTS)
        comparison_link = next(link for link in report["links"] if link.endswith("compare.html"))
        browser.get(comparison_link)
        comparison = browser.execute_script(PAGE_FACTS)
    finally:
        browser.quit()

    sections = " | ".join(report["sections"])
    for expected in ("Accuracy", "Token weights", "Comparison", "Progressive schedule", "Training", "Predictions"):
        assert expected in sections, f"{expected} missing from the rendered report: {sections}"
    assert all(i["loaded"] for i in report["images"]), report["images"]
    pictures = {i["alt"] for i in report["images"]}
    assert pictures == {"results", "phases", "budget", "clusters", "training"}, pictures
    arms = [line for line in (kpod_run / "report.md").read_text().splitlines() if line.startswith("| kpod")]
    arms += [line for line in (kpod_run / "report.md").read_text().splitlines() if line.startswith("| std-cot")]
    assert len(arms) == 2, "the report's results table names both arms of its comparison"
    assert arms[1].startswith("| std-cot | 50.00 | 4.250 ± "), arms  # each arm's own metrics
    assert report["shades"] > 1, "the token-weight view shows one shade only"
    assert report["rendered_height"] > 1000
    assert comparison["title"] == "kpod compare"
    assert comparison["images"] and all(i["loaded"] for i in comparison["images"]), comparison["images"]
