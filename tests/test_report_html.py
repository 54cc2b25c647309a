"""The HTML report opens in a real browser: headless Chromium renders it and decodes every
embedded figure. (`make test` installs Debian's chromium where it can; without it this
test is skipped, saying so.)"""

import shutil
import subprocess

import pytest
from test_report import MODELS, _inputs

from transferlab.report import build

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute('data-check', `images ${ok}/${imgs.length} tables ${document.querySelectorAll('table').length}`);
});
</script></body>"""


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (make test installs it where apt-get is available)"
)
def test_html_report_renders_in_headless_chromium(tmp_path):
    metrics, details = _inputs(MODELS)
    page = build(metrics, details, title="T", code_version="abc", params_text="base: {}").html("T")
    probe = tmp_path / "report.html"
    probe.write_text(page.replace("</body>", CHECK))
    res = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert 'data-check="images 4/4 tables 1"' in res.stdout, res.stdout[-2000:]
