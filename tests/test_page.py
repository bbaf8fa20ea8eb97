"""The web page in a real headless Chromium: pick a style, upload a photo, see the result; blend two
styles of a family with a slider."""

import shutil
import time

import pytest
import requests

from factory import registry
from serving import publish_random_family, served  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def page():
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    with playwright_api.sync_playwright() as playwright:
        # The flags keep Chromium off the network: this machine reaches only loopback.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield browser.new_page()
        browser.close()


def test_pick_a_style_upload_a_photo_and_see_the_result(served, page, tmp_path):
    from PIL import Image

    Image.new("RGB", (80, 60), (30, 120, 200)).save(tmp_path / "photo.png")
    page.goto(served["base"] + "/")
    cards = page.locator(".style")
    cards.first.wait_for(timeout=30_000)
    assert cards.count() == 3
    # Every card shows its painting and what the model made of the sample photo, once they have loaded.
    assert page.locator(".style img.painting").count() == 3 and page.locator(".style img.preview").count() == 3
    page.wait_for_function("[...document.querySelectorAll('.style img')].every(img => img.complete && img.naturalWidth > 0)",
                           timeout=30_000)
    assert "colour 0.42" in page.locator('.style[data-style="alpha"]').text_content()

    page.locator('.style[data-style="beta"]').click()
    page.set_input_files("#photo", str(tmp_path / "photo.png"))
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')", timeout=60_000)
    size = page.locator("#result").evaluate("img => new Promise(ok => img.decode().then(() => ok([img.naturalWidth, img.naturalHeight])))")
    assert size == [80, 60]
    assert page.locator("#original").evaluate("img => img.naturalWidth") == 80
    page.screenshot(path=str(tmp_path / "page.png"))


def test_an_error_from_the_server_is_shown_to_the_person(served, page, tmp_path):
    (tmp_path / "notes.png").write_bytes(b"not really a png")
    page.goto(served["base"] + "/")
    page.locator(".style").first.wait_for(timeout=30_000)
    page.locator(".style").first.click()
    page.set_input_files("#photo", str(tmp_path / "notes.png"))
    page.wait_for_function("document.getElementById('status').className === 'error'", timeout=60_000)
    assert "415" in page.locator("#status").text_content()


def test_a_familys_style_blends_with_another_of_its_family_by_the_slider(served, page, tmp_path):
    from PIL import Image

    root, names = served["root"] / "registry", ("page-fam-a", "page-fam-b")
    publish_random_family(root, names, seed=3, family="page-family")
    try:
        Image.new("RGB", (64, 48), (200, 120, 40)).save(tmp_path / "photo.png")
        answers = []
        page.on("response", lambda response: answers.append(response) if response.request.method == "POST" else None)
        listed = lambda: {style["name"] for style in requests.get(served["base"] + "/styles", timeout=30).json()}
        deadline = time.monotonic() + 30
        while not set(names) <= listed():  # the front door reads the registry every second
            assert time.monotonic() < deadline, "the family's styles were not listed within 30 s"
            time.sleep(0.2)
        page.goto(served["base"] + "/")
        page.locator(f'.style[data-style="{names[0]}"]').wait_for(timeout=30_000)
        page.locator('.style[data-style="alpha"]').click()
        assert page.locator("#blend").is_hidden()  # a style with a network of its own has nothing to blend with
        page.locator(f'.style[data-style="{names[0]}"]').click()
        assert page.locator("#blend").is_visible()
        assert page.locator("#blend-with option").all_text_contents() == ["(none)", names[1]]
        page.set_input_files("#photo", str(tmp_path / "photo.png"))
        page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')", timeout=60_000)
        page.select_option("#blend-with", names[1])
        page.locator("#blend-amount").evaluate("slider => { slider.value = '0.3'; slider.dispatchEvent(new Event('change')); }")
        page.wait_for_function(f"document.getElementById('status').textContent === 'Done: {names[0]}:0.7 + {names[1]}:0.3.'", timeout=60_000)
        blended = answers[-1]
        assert blended.status == 200 and blended.headers["x-blend"] == f"{names[0]}:0.7,{names[1]}:0.3"
        assert page.locator("#result").evaluate("img => img.decode().then(() => img.naturalWidth)") == 64
        page.screenshot(path=str(tmp_path / "blend.png"), full_page=True)
    finally:
        for name in names:
            registry.withdraw(str(root), name)
