"""The HTML report opens in a real browser: headless Chromium renders it and decodes every
embedded figure. (`make test` installs Debian's chromium where it can; without it this
test is skipped, saying so.)"""

import shutil
import subprocess

import pytest
from test_report import MODELS, _inputs

from transferlab.report.document import build

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")

CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const literal = document.body.innerText.includes('- *') || document.body.innerText.includes('**');
  document.body.setAttribute('data-check', `images ${ok}/${imgs.length} tables ${document.querySelectorAll('table').length} `
    + `items ${document.querySelectorAll('li').length} emphasis ${document.querySelectorAll('li em').length} `
    + `strong ${document.querySelectorAll('li strong').length} literal ${literal}`);
});
</script></body>"""


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (make test installs it where apt-get is available)"
)
def test_html_report_renders_in_headless_chromium(tmp_path):
    metrics, details, comparisons = _inputs(MODELS)
    doc = build(metrics, details, comparisons, title="T", code_version="abc", params_text="base: {}")
    n_items = sum(len(b[1]) for b in doc.blocks if b[0] == "list")
    page = doc.html("T")
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
    # four figures decoded; comparison, paired and protocol tables; the rules of thumb (and
    # the ties) as real list items with rendered emphasis and bold answers, no literal markdown
    want = f'data-check="images 4/4 tables 3 items {n_items} emphasis 7 strong 7 literal false"'
    assert want in res.stdout, res.stdout[-3000:]
