"""`medsa app` in a real headless Chromium (the distribution's package, driven by Selenium; nothing downloads a
browser): open a demo NIfTI volume, move to a slice, click, compare the downloaded mask with `medsa predict`,
then upload a corrupt file and check that the page says so and keeps working.

Without /usr/bin/chromium and /usr/bin/chromedriver the test is skipped with the reason, unless
MEDSA_REQUIRE_BROWSER=1 (set by .ci/run), where a missing browser fails it. MEDSA_SCREENSHOT=docs/app.png saves
the page, after the click, as the README's screenshot.
"""

from __future__ import annotations

import os
import socket
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import randomize_adapters
from peft import get_peft_model
from transformers import SamModel

from peft_medsa import MedSAConfig
from peft_medsa.app import DEFAULT_MODEL, MedSAApp, build_app, demo_cases, load_segmenters
from peft_medsa.cli import main

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SLICE = 9
pytest.importorskip("gradio", reason="the app needs gradio: pip install -e '.[app]'")
pytestmark = pytest.mark.slow


def _browser_or_skip():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("the selenium package")
    if missing:
        reason = f"browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("MEDSA_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        print(f"SKIPPED: {reason}")
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)  # never let Selenium Manager fetch a browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1950"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A Med-SA adapter with random weights for the offline base, so the page shows two different masks."""
    torch.manual_seed(0)
    model = get_peft_model(SamModel.from_pretrained(DEFAULT_MODEL), MedSAConfig())
    randomize_adapters(model, std=0.02)
    path = tmp_path_factory.mktemp("adapters") / "random-adapter"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def server(adapter):
    """The app on a free loopback port, in this process."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = MedSAApp(
        load_segmenters(str(DEFAULT_MODEL), [str(adapter)]), max_upload_mb=20, demo_cases=demo_cases()
    )
    page = build_app(app)
    page.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield app, f"http://127.0.0.1:{port}/"
    page.close()


def test_click_on_a_volume_slice_gives_the_mask_of_medsa_predict(server, adapter, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    app, url = server
    volume = app.demo_cases["mni152-slab4.nii.gz (volume, demo task)"]  # a real brain MR (MNI152 T1)
    browser = _browser_or_skip()
    try:
        wait = WebDriverWait(browser, 30)
        summary = lambda: browser.find_element(By.ID, "summary").text  # noqa: E731
        browser.get(url)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
        browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(volume))
        wait.until(lambda b: "mni152-slab4.nii.gz" in summary())

        number = browser.find_element(By.CSS_SELECTOR, "#slice input[type=number]")
        number.send_keys(Keys.CONTROL, "a")
        number.send_keys(str(SLICE), Keys.ENTER)
        wait.until(lambda b: f"slice k = {SLICE} of 15" in summary())

        picture = browser.find_element(By.CSS_SELECTOR, "#prompt-image img")
        ActionChains(browser).move_to_element_with_offset(picture, -20, 10).click().perform()
        rows = lambda: [t for t in summary().splitlines() if t.startswith(("base ", "random-adapter "))]  # noqa: E731
        wait.until(lambda b: len(rows()) == 2)  # the results table has a row per model
        line = next(t for t in summary().splitlines() if t.startswith("--point"))
        _, x, y, _, slices = line.split()
        assert slices == f"{SLICE}:{SLICE + 1}"
        if os.environ.get("MEDSA_SCREENSHOT"):
            browser.save_screenshot(os.environ["MEDSA_SCREENSHOT"])

        browser.find_element(By.ID, "write").click()  # the adapter's mask (the default choice)
        wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#mask-file a"))
        href = browser.find_element(By.CSS_SELECTOR, "#mask-file a").get_attribute("href")
        downloaded = tmp_path / "downloaded.nii.gz"
        downloaded.write_bytes(urllib.request.urlopen(href, timeout=30).read())

        expected = tmp_path / "predict.nii.gz"
        argv = ["predict", str(volume), "--model", str(DEFAULT_MODEL), "--adapter", str(adapter)]
        argv += ["--point", x, y, "--slices", f"{SLICE}:{SLICE + 1}", "--output", str(expected)]
        assert main(argv) == 0
        got, source = nib.load(downloaded), nib.load(volume)
        mask = np.asanyarray(got.dataobj)
        assert mask[:, :, SLICE].sum() > 0
        np.testing.assert_array_equal(mask, np.asanyarray(nib.load(expected).dataobj))
        np.testing.assert_array_equal(got.affine, source.affine)
        assert f"{int(mask.sum())} px" in rows()[1]  # the page's area is this mask's

        corrupt = tmp_path / "corrupt.nii.gz"
        corrupt.write_bytes(b"\x1f\x8b not really gzip" * 10)
        browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(corrupt))
        wait.until(lambda b: "corrupt.nii.gz: cannot read" in b.find_element(By.ID, "status").text)
        assert "Traceback" not in browser.page_source
        picture = browser.find_element(By.CSS_SELECTOR, "#prompt-image img")
        ActionChains(browser).move_to_element_with_offset(picture, 10, 10).click().perform()  # still answers
        wait.until(lambda b: summary().count("--point") == 2)
        assert f"slice k = {SLICE} of 15" in summary()
    finally:
        browser.quit()
