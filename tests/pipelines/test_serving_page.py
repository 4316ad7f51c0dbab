"""The web page in a real headless browser (Debian's chromium via chromedriver), against the
application deployed with `serve deploy infra/serve/read-tiny.yaml` on local Ray.

The browser emulates a phone's viewport (390 x 844 CSS px) and cannot resolve any host but the loopback server.
Screenshots go to artifacts/test-screenshots/ (serve-page.png, serve-page-heatmap.png).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml
from PIL import Image, ImageDraw
from services import free_port
from tiny_models import register_tiny

from pipelines.champion import CHAMPION_ALIAS
from pipelines.registry import set_alias

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "artifacts" / "test-screenshots"
SERVE_CONFIG = REPO / "infra" / "serve" / "read-tiny.yaml"
MODEL_NAME = "read-serve-page"
QUESTION = "Where is the red circle? Please output segmentation mask."
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
PHONE_WIDTH, PHONE_HEIGHT = 390, 844
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    # Nothing but the loopback server resolves: the page cannot reach the internet even by mistake.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
DEPLOY_TIMEOUT_S = 300
WAIT_S = 120


@dataclass
class PageApp:
    url: str
    version: str


def shapes_image(path: Path, width: int = 160, height: int = 120) -> Path:
    image = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 25, 70, 75), fill=(220, 30, 30))
    draw.rectangle((95, 50, 145, 100), fill=(30, 30, 220))
    image.save(path)
    return path


def _deployed_config(port: int, tracking_uri: str) -> dict:
    """infra/serve/read-tiny.yaml as shipped, pointed at this test's port, store and model."""
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    config["http_options"]["port"] = port
    [app] = config["applications"]
    app["args"]["tracking_uri"] = tracking_uri
    app["args"]["overrides"] = [*app["args"].get("overrides", []),
                                f"mlflow.registered_model={MODEL_NAME}", "serve.max_new_tokens=2",
                                "serve.num_cpus_per_replica=1", "serve.ingress_cpus=0.1"]
    return config


def _wait_healthy(url: str) -> None:
    from ray import serve

    deadline = time.monotonic() + DEPLOY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        status = serve.status().applications.get("read")
        if status is not None and status.status == "DEPLOY_FAILED":
            pytest.fail(f"serve deploy failed: {status.message}")
        time.sleep(1)
    pytest.fail(f"the application did not become healthy in {DEPLOY_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def page_app(ray_local, mlflow_server: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[PageApp]:
    from ray import serve

    folder = tmp_path_factory.mktemp("serve-page")
    version = register_tiny(folder, MODEL_NAME, mlflow_server)
    set_alias(MODEL_NAME, CHAMPION_ALIAS, version, tracking_uri=mlflow_server)
    port = free_port()
    config_path = folder / "read-tiny.yaml"
    config_path.write_text(yaml.safe_dump(_deployed_config(port, mlflow_server)))
    dashboard = f"http://{ray_local.dashboard_url}"
    deploy = subprocess.run([str(Path(sys.executable).parent / "serve"), "deploy",
                             str(config_path), "--address", dashboard],
                            capture_output=True, text=True, timeout=120)
    assert deploy.returncode == 0, deploy.stderr[-3000:]
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url)
        yield PageApp(url, version)
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        message = "chromium/chromedriver missing: apt-get install -y chromium chromium-driver"
        if os.environ.get("CI"):
            pytest.fail(message + " (scripts/test.sh installs them)")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    # A phone's viewport (desktop windows cannot be narrower than ~500 px); `mobile` makes the
    # page's viewport meta tag count, as on a phone.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": PHONE_WIDTH, "height": PHONE_HEIGHT, "deviceScaleFactor": 2, "mobile": True})
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, message: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(condition, message)


def _text(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


def test_page_shows_overlay_answer_see_and_version(page_app: PageApp, browser,
                                                   tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    image_path = shapes_image(tmp_path / "shapes.png")
    browser.get(page_app.url + "/")
    served_as = f"{MODEL_NAME} v{page_app.version}"
    _wait(browser, lambda d: _text(d, "model-version") == served_as, "model version shown")

    browser.find_element(By.ID, "image-input").send_keys(str(image_path))
    _wait(browser, lambda d: d.find_element(By.ID, "preview").is_displayed(), "preview shown")
    browser.find_element(By.ID, "question").send_keys(QUESTION)
    browser.find_element(By.ID, "submit").click()
    overlay = _wait(browser, lambda d: d.find_element(By.ID, "result").is_displayed()
                    and d.find_element(By.ID, "overlay"), "result shown")
    _wait(browser, lambda d: d.execute_script(
        "const i = document.getElementById('overlay'); return i.complete && i.naturalWidth > 0;"),
        "overlay image loaded")

    # What the page shows is what the API answers for the same image and question.
    with open(image_path, "rb") as handle:
        expected = requests.post(f"{page_app.url}/v1/segment",
                                 files={"image": ("shapes.png", handle, "image/png")},
                                 data={"question": QUESTION}, timeout=WAIT_S).json()
    assert _text(browser, "answer") == expected["answer"] == "[SEG][SEG]"
    assert _text(browser, "see") == ("present" if expected["see"] else "absent")
    assert _text(browser, "answer-model") == served_as
    overlay_src = overlay.get_attribute("src")
    assert overlay_src.startswith("data:image/png;base64,")
    size = browser.execute_script(
        "const i = document.getElementById('overlay'); return [i.naturalWidth, i.naturalHeight];")
    assert size == [160, 120]

    # The answer was scrolled into view (it sits below the form on a phone).
    _wait(browser, lambda d: d.execute_script(
        "return window.scrollY > 0 && document.getElementById('result')"
        ".getBoundingClientRect().top < window.innerHeight / 2;"), "result scrolled into view")
    # Phone width: nothing wider than the screen, the picture fits it.
    layout = browser.execute_script(
        "return [document.documentElement.scrollWidth, window.innerWidth,"
        " document.getElementById('overlay').getBoundingClientRect().right];")
    assert layout[1] == PHONE_WIDTH and layout[0] <= layout[1] and layout[2] <= layout[1], layout
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "serve-page.png"))

    toggle = browser.find_element(By.ID, "heatmap-toggle")
    assert toggle.is_enabled()
    toggle.click()
    heatmap_src = overlay.get_attribute("src")
    assert heatmap_src.startswith("data:image/png;base64,") and heatmap_src != overlay_src
    browser.save_screenshot(str(SCREENSHOTS / "serve-page-heatmap.png"))
    toggle.click()
    assert overlay.get_attribute("src") == overlay_src

    # Everything the page loaded came from the server itself.
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name);")
    assert loaded and all(name.startswith(page_app.url + "/") for name in loaded), loaded
    with Image.open(SCREENSHOTS / "serve-page.png") as shot:
        assert shot.size[0] == 2 * PHONE_WIDTH  # a capture of the phone viewport (2x pixels)


def test_dropped_image_and_a_refused_question(page_app: PageApp, browser) -> None:
    from selenium.webdriver.common.by import By

    browser.get(page_app.url + "/")
    browser.execute_script("""
        const canvas = document.createElement('canvas');
        canvas.width = 64; canvas.height = 48;
        const context = canvas.getContext('2d');
        context.fillStyle = '#c03030'; context.fillRect(8, 8, 24, 24);
        canvas.toBlob((blob) => {
          const transfer = new DataTransfer();
          transfer.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
          const zone = document.getElementById('drop-zone');
          zone.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true,
                                                    cancelable: true}));
        }, 'image/png');
    """)
    _wait(browser, lambda d: _text(d, "drop-hint") == "dropped.png", "dropped file taken")
    browser.find_element(By.ID, "question").send_keys("Where is it? [SEG]")
    browser.find_element(By.ID, "submit").click()
    _wait(browser, lambda d: d.find_element(By.ID, "error").is_displayed(), "error shown")
    assert _text(browser, "error").startswith("400: question must not contain")
    assert not browser.find_element(By.ID, "result").is_displayed()
    browser.find_element(By.ID, "question").clear()
    browser.find_element(By.ID, "question").send_keys(QUESTION)
    browser.find_element(By.ID, "submit").click()
    _wait(browser, lambda d: d.find_element(By.ID, "result").is_displayed(), "result shown")
    assert _text(browser, "answer") == "[SEG][SEG]"
    assert not browser.find_element(By.ID, "error").is_displayed()

