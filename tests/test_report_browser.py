"""The demo's report.html as a person sees it: rendered by headless Chromium (Debian's ``chromium``)."""

import html
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image, ImageStat

PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0));
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-broken', broken.length);
  const answer = document.getElementById('answer');
  document.body.setAttribute('data-answer', answer ? answer.innerText.slice(0, 2000) : '');
});
</script>"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        if os.environ.get("SYNTHIMG_REQUIRE_BROWSER"):
            pytest.fail("no chromium on PATH (apt-get install chromium)")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    return found


def _browser(chromium: str, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=10000"]
    return subprocess.run([chromium, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_report_renders_in_a_real_browser(tmp_path):
    chromium = _chromium()
    demo = subprocess.run([sys.executable, "-m", "synthimg", "--quiet", "demo", "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    page = tmp_path / "study_quick" / "report" / "report.html"
    headline = json.loads((tmp_path / "study_quick" / "study_stats.json").read_text())["headline"]

    probe = page.with_name("probe.html")  # the same page with a script that reports what loaded
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    dom = _browser(chromium, "--dump-dom", probe.as_uri()).stdout
    images = int(re.search(r'data-images="(\d+)"', dom).group(1))
    broken = int(re.search(r'data-broken="(\d+)"', dom).group(1))
    assert images >= 3 and broken == 0, f"{broken} of {images} images did not load"
    answer = html.unescape(re.search(r'data-answer="([^"]*)"', dom).group(1))
    assert " ".join(headline.split()) in " ".join(answer.split())  # the whole headline is what the page leads with

    shot = tmp_path / "report.png"
    _browser(chromium, f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri())
    target = os.environ.get("SYNTHIMG_SCREENSHOT")  # to look at it yourself
    if target:
        shutil.copy(shot, target)
    with Image.open(shot) as img:
        grey = img.convert("L")
        stat = ImageStat.Stat(grey)
        inked = sum(grey.histogram()[:200]) / (grey.width * grey.height)
    assert stat.stddev[0] > 10 and inked > 0.02, "the page renders blank"
