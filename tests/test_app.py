"""`python -m mpgsam2.app` in a real browser: headless Chromium (system packages chromium + chromium-driver)
driven by Selenium loads the page, uploads a small video, submits two sentences and gets the overlay video and the
masks zip, which hold what `python -m mpgsam2.predict` writes for the same input."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import time
import urllib.request
import zipfile
from pathlib import Path

import av
import pytest

from mpgsam2 import predict
from mpgsam2.media import render_demo_video
from mpgsam2.media.outputs import sentence_folder

SENTENCES = ["the red square", "the blue circle"]
NUM_FRAMES = 5


def _browser() -> tuple[str, str]:
    """Chromium and its driver from the system packages; a missing browser fails the test (CI installs it)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail(
            "the browser test needs chromium and chromedriver on PATH (Debian: apt-get install chromium "
            "chromium-driver; .ci/run installs them)"
        )
    return browser, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(find, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s")


@pytest.fixture
def page(trained, tmp_path, monkeypatch):
    """The app on a free local port (the demo model) and its address."""
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    from mpgsam2.app import build_app
    from mpgsam2.text.tokenizer import Beit3Tokenizer

    ckpt, _ = trained
    model, tokenizer_path = predict.load_model_for_inference(ckpt)
    workdir = tmp_path / "app"
    workdir.mkdir()
    app = build_app(model, Beit3Tokenizer(tokenizer_path), workdir)
    port = _free_port()
    app.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        allowed_paths=[str(workdir)],
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


def test_the_page_segments_an_uploaded_video(page, trained, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    browser, driver_path = _browser()
    clip = tmp_path / "clip.mp4"
    render_demo_video(clip, num_frames=NUM_FRAMES, fps=12, size=40)
    options = Options()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1024"):
        options.add_argument(arg)
    options.page_load_strategy = "eager"  # the page's web fonts cannot load offline; do not wait for them
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        driver.get(page)
        upload = _wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"), 60)
        upload[0].send_keys(str(clip))
        # uploaded: the file list shows it
        _wait_for(
            lambda: driver.find_elements(By.CSS_SELECTOR, "#upload td.filename[aria-label='clip.mp4']"), 60
        )
        driver.find_element(By.CSS_SELECTOR, "#sentences textarea").send_keys("\n".join(SENTENCES))
        driver.find_element(By.ID, "segment").click()
        video = _wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#overlay video[src]"))[0]
        link = _wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#masks a[href$='.zip']"))[0]
        video_url, zip_url = video.get_attribute("src"), link.get_attribute("href")
    finally:
        driver.quit()

    overlay = tmp_path / "overlay.mp4"
    overlay.write_bytes(urllib.request.urlopen(video_url, timeout=30).read())
    with av.open(str(overlay)) as container:
        assert sum(1 for _ in container.decode(video=0)) == NUM_FRAMES
    archive = zipfile.ZipFile(io.BytesIO(urllib.request.urlopen(zip_url, timeout=30).read()))
    names = set(archive.namelist())
    pngs = {
        f"{sentence_folder(k, s)}/{t:06d}.png" for k, s in enumerate(SENTENCES) for t in range(NUM_FRAMES)
    }
    assert names == pngs | {"masks.json"}

    # the same code path as the CLI: the same masks.json (but for the input's path)
    ckpt, _ = trained
    out = tmp_path / "cli"
    assert predict.main([str(ckpt), str(clip), *SENTENCES, "--out", str(out), "--no-progress"]) == 0
    from_page = json.loads(archive.read("masks.json"))
    from_cli = json.loads((out / "masks.json").read_text())
    assert Path(from_page.pop("input")).name == "clip.mp4"
    from_cli.pop("input")
    assert from_page == from_cli
    for name in sorted(pngs):
        assert archive.read(name) == (out / name).read_bytes()


def test_a_request_without_sentences_is_refused(trained, tmp_path):
    from mpgsam2.app import run_request
    from mpgsam2.text.tokenizer import Beit3Tokenizer

    model, tokenizer_path = predict.load_model_for_inference(trained[0])
    with pytest.raises(ValueError, match="one or more sentences"):
        run_request(model, Beit3Tokenizer(tokenizer_path), tmp_path / "clip.mp4", " \n ", tmp_path)
    assert os.listdir(tmp_path) == []
