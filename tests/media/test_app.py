"""`python -m mpgsam2.app`: the page in a real browser (marked `browser`: headless Chromium from the system
packages chromium + chromium-driver, driven by Selenium; a missing browser fails them, it never skips them), and
its limits, progress, refusals, cleanup and queue at the Python level."""

from __future__ import annotations

import io
import json
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import av
import pytest
from PIL import Image

from mpgsam2 import predict
from mpgsam2.media import render_demo_video
from mpgsam2.media.outputs import sentence_folder

SENTENCES = ["the red square", "the blue circle"]
NUM_FRAMES = 5
LONG_VIDEO_FRAMES = 12
# the server of the browser tests: a cap below the long video's length, chunks that split it, a 1 MiB upload limit
CAP, CHUNK, LONG_SIDE = 8, 4, 256


def _limits(**changes):
    from mpgsam2.app import PageLimits

    base = dict(max_frames=CAP, long_side=LONG_SIDE, chunk_size=CHUNK, max_upload_mb=1, queue_size=4)
    return PageLimits(**{**base, **changes})


def _browser_paths() -> tuple[str, str]:
    """Chromium and its driver from the system packages; a missing browser fails the test (never a skip)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail(
            "the browser tests need chromium and chromedriver on PATH: apt-get install chromium chromium-driver "
            '(Debian; Ubuntu: chromium-browser chromium-chromedriver), or deselect them with -m "not browser"'
        )
    return browser, driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(find, timeout: float = 180.0, what: str = "the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _model(trained):
    from mpgsam2.text.tokenizer import Beit3Tokenizer

    model, tokenizer_path = predict.load_model_for_inference(trained[0])
    return model, Beit3Tokenizer(tokenizer_path)


@pytest.fixture
def serve(trained, tmp_path, monkeypatch):
    """serve(limits) -> (address, result store): the app with the demo model on a free local port."""
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # Gradio's uploads and served copies
    from mpgsam2.app import ResultStore, build_app, launch

    model, tokenizer = _model(trained)
    started = []

    def start(limits):
        store = ResultStore(tmp_path / "app", limits.keep_results, limits.keep_seconds)
        app = build_app(model, tokenizer, store, limits)
        port = _free_port()
        launch(
            app,
            store,
            limits,
            server_name="127.0.0.1",
            server_port=port,
            prevent_thread_lock=True,
            quiet=True,
        )
        started.append((app, store))
        return f"http://127.0.0.1:{port}/", store

    yield start
    for app, store in started:
        app.close()
        store.close()


@pytest.fixture
def chromium(request):
    """A headless Chromium driven by Selenium (for tests marked ``browser``: the README's command without the
    browser deselects exactly those)."""
    if request.node.get_closest_marker("browser") is None:
        pytest.fail(f"{request.node.name} drives Chromium: mark it @pytest.mark.browser")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = _browser_paths()
    options = Options()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(arg)
    options.page_load_strategy = "eager"  # the page's web fonts cannot load offline; do not wait for them
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def _page_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def _upload(driver, path: Path) -> None:
    from selenium.webdriver.common.by import By

    field = _wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"), 60)
    field[0].send_keys(str(path))


def _submit(driver, path: Path, sentences: list[str]) -> None:
    """Upload ``path``, type the sentences and press Segment."""
    from selenium.webdriver.common.by import By

    _upload(driver, path)
    _wait_for(  # uploaded: the file list shows it
        lambda: driver.find_elements(By.CSS_SELECTOR, f"#upload td.filename[aria-label='{path.name}']"), 60
    )
    driver.find_element(By.CSS_SELECTOR, "#sentences textarea").send_keys("\n".join(sentences))
    driver.find_element(By.ID, "segment").click()


def _results(driver) -> tuple[str, str]:
    """The overlay video's and the masks zip's addresses, once the page shows them."""
    from selenium.webdriver.common.by import By

    video = _wait_for(
        lambda: driver.find_elements(By.CSS_SELECTOR, "#overlay video[src]"), what="the overlay"
    )
    link = _wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#masks a[href$='.zip']"), what="the zip")
    return video[0].get_attribute("src"), link[0].get_attribute("href")


def _decoded_frames(url: str, tmp_path: Path) -> int:
    overlay = tmp_path / "overlay.mp4"
    overlay.write_bytes(urllib.request.urlopen(url, timeout=30).read())
    with av.open(str(overlay)) as container:
        return sum(1 for _ in container.decode(video=0))


def _zip(url: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(urllib.request.urlopen(url, timeout=30).read()))


@pytest.mark.browser
def test_the_page_segments_an_uploaded_video(serve, chromium, trained, tmp_path):
    address, _ = serve(_limits())
    clip = tmp_path / "clip.mp4"
    render_demo_video(clip, num_frames=NUM_FRAMES, fps=12, size=40)
    chromium.get(address)
    _submit(chromium, clip, SENTENCES)
    video_url, zip_url = _results(chromium)
    assert _wait_for(lambda: "Segmented 5 frames." in _page_text(chromium), 30, "the status line")

    assert _decoded_frames(video_url, tmp_path) == NUM_FRAMES
    archive = _zip(zip_url)
    names = set(archive.namelist())
    pngs = {
        f"{sentence_folder(k, s)}/{t:06d}.png" for k, s in enumerate(SENTENCES) for t in range(NUM_FRAMES)
    }
    assert names == pngs | {"masks.json"}

    # the same code path as the CLI with the page's default options: the same masks.json (but for the input's
    # path) and the same PNGs
    out = tmp_path / "cli"
    options = ["--max-frames", str(CAP), "--long-side", str(LONG_SIDE), "--chunk-size", str(CHUNK)]
    assert (
        predict.main([str(trained[0]), str(clip), *SENTENCES, "--out", str(out), *options, "--no-progress"])
        == 0
    )
    from_page = json.loads(archive.read("masks.json"))
    from_cli = json.loads((out / "masks.json").read_text())
    assert Path(from_page.pop("input")).name == "clip.mp4"
    from_cli.pop("input")
    assert from_page == from_cli
    for name in sorted(pngs):
        assert archive.read(name) == (out / name).read_bytes()


@pytest.mark.browser
def test_a_long_video_is_capped_and_its_progress_shown(serve, chromium, tmp_path, monkeypatch):
    import mpgsam2.app as app_module

    # the run stops after its first chunk until the page has shown that progress (released in any case)
    shown = threading.Event()
    real_segment = app_module.segment_to_folder

    def segment_waiting_for_the_page(*args, progress, **kwargs):
        segmented = 0

        def hook(stage, n):
            nonlocal segmented
            progress(stage, n)
            segmented += n if stage == "segmented" else 0
            if stage == "segmented" and segmented == CHUNK:
                shown.wait(120)

        return real_segment(*args, progress=hook, **kwargs)

    monkeypatch.setattr(app_module, "segment_to_folder", segment_waiting_for_the_page)
    address, _ = serve(_limits())
    clip = tmp_path / "long.mp4"
    render_demo_video(clip, num_frames=LONG_VIDEO_FRAMES, fps=12, size=40)
    chromium.get(address)
    try:
        _submit(chromium, clip, SENTENCES[:1])
        # the progress bar: frames segmented out of the capped count
        _wait_for(lambda: f"{CHUNK}/{CAP} frames" in _page_text(chromium), 120, "the progress bar")
    finally:
        shown.set()
    video_url, zip_url = _results(chromium)
    text = _wait_for(lambda: (t := _page_text(chromium)) and "frame cap" in t and t, 30, "the capped warning")
    assert f"only the first {CAP} were segmented" in text
    assert text.count(f"only the first {CAP} were segmented") == 2  # the status line and the warning
    assert _decoded_frames(video_url, tmp_path) == CAP
    masks = json.loads(_zip(zip_url).read("masks.json"))
    assert [frame["index"] for frame in masks["frames"]] == list(range(CAP))


@pytest.mark.browser
def test_an_upload_over_the_limit_is_refused_in_the_page(serve, chromium, tmp_path):
    address, store = serve(_limits(max_upload_mb=1))
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * (3 * 1024 * 1024 // 2))
    chromium.get(address)
    _wait_for(lambda: "up to 1 MB" in _page_text(chromium), 60, "the upload limit in the page")
    _upload(chromium, big)
    text = _wait_for(
        lambda: (t := _page_text(chromium)) and "maximum allowed size" in t and t, 60, "the refusal"
    )
    assert "big.mp4" in text
    assert not list((tmp_path / "gradio").rglob("big.mp4"))  # not stored

    # a file under the limit that is no video: the server's refusal, naming the file as uploaded
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(b"not a video" * 100)
    _submit(chromium, damaged, SENTENCES[:1])
    _wait_for(lambda: "damaged.mp4: cannot read the video" in _page_text(chromium), 60, "the refusal")
    assert str(tmp_path / "gradio") not in _page_text(chromium)
    assert not list(store.root.iterdir())


@pytest.mark.browser
def test_results_are_removed_after_the_time_limit(serve, chromium, tmp_path):
    address, store = serve(_limits(keep_seconds=8))
    clip = tmp_path / "clip.mp4"
    render_demo_video(clip, num_frames=3, fps=12, size=40)
    chromium.get(address)
    _submit(chromium, clip, SENTENCES[:1])
    video_url, zip_url = _results(chromium)
    assert urllib.request.urlopen(zip_url, timeout=30).status == 200
    assert list((tmp_path / "gradio").rglob("clip.mp4"))  # the upload, in Gradio's cache
    assert len(list(store.root.iterdir())) == 1

    def gone(url: str) -> bool:
        try:
            urllib.request.urlopen(url, timeout=30)
        except urllib.error.HTTPError:
            return True
        return False

    _wait_for(lambda: gone(zip_url) and gone(video_url), 60, "the served results to go")
    _wait_for(lambda: not list(store.root.iterdir()), 60, "the request folder to go")
    # the upload went too (Gradio leaves its empty hash folders and an empty temporary file of its upload parser)
    assert not [p for p in (tmp_path / "gradio").rglob("*") if p.is_file() and p.stat().st_size]


def test_a_request_without_sentences_is_refused(trained, tmp_path):
    from mpgsam2.app import run_request

    model, tokenizer = _model(trained)
    with pytest.raises(ValueError, match="one or more sentences"):
        run_request(model, tokenizer, tmp_path / "clip.mp4", " \n ", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_progress_counts_the_frames_and_the_cap_is_exact(trained, tmp_path):
    from mpgsam2.app import run_request

    model, tokenizer = _model(trained)
    clip = tmp_path / "long.mp4"
    render_demo_video(clip, num_frames=LONG_VIDEO_FRAMES, fps=12, size=40)
    calls = []
    folder = tmp_path / "capped"
    folder.mkdir()
    result = run_request(
        model,
        tokenizer,
        clip,
        "the red square",
        folder,
        CHUNK,
        max_frames=CAP,
        progress=lambda *a: calls.append(a),
    )
    assert (result.num_frames, result.capped) == (CAP, True)
    # per chunk: its frames decoded (the count of segmented ones unchanged), then segmented one by one
    per_chunk = [
        [start] * CHUNK + list(range(start + 1, start + CHUNK + 1)) for start in range(0, CAP, CHUNK)
    ]
    assert [done for done, _, _ in calls] == [0] + sum(per_chunk, [])
    assert {total for _, total, _ in calls} == {CAP}
    assert calls[-1][2] == f"segmenting, {CAP} frames decoded"
    assert len(json.loads((folder / "result" / "masks.json").read_text())["frames"]) == CAP
    assert sorted(p.name for p in folder.iterdir()) == ["masks.zip", "result"]

    # a cap equal to the length: every frame, not capped; a stride halves the frames
    for cap, stride, frames in ((LONG_VIDEO_FRAMES, 1, LONG_VIDEO_FRAMES), (CAP, 2, LONG_VIDEO_FRAMES // 2)):
        folder = tmp_path / f"cap{cap}_stride{stride}"
        folder.mkdir()
        result = run_request(model, tokenizer, clip, "the red square", folder, max_frames=cap, stride=stride)
        assert (result.num_frames, result.capped) == (frames, False)


def test_refusals_are_messages_for_the_page(trained, tmp_path):
    import gradio as gr

    from mpgsam2.app import ResultStore, make_segment_handler

    model, tokenizer = _model(trained)
    store = ResultStore(tmp_path / "app", 5, 60)
    segment = make_segment_handler(model, tokenizer, store, _limits(max_sentences=2))
    clip = tmp_path / "clip.mp4"
    render_demo_video(clip, num_frames=3, fps=12, size=40)
    damaged = tmp_path / "cache" / "damaged.mp4"
    damaged.parent.mkdir()
    damaged.write_bytes(b"not a video" * 100)

    def progress(*args, **kwargs):
        pass

    options = (CAP, LONG_SIDE, 1, CHUNK)
    refusals = [
        ((None, "the red square", *options), "upload a video or an image first"),
        ((str(clip), " \n", *options), "type one or more sentences"),
        ((str(clip), "a\nb\nc", *options), "at most 2 sentences per request here, got 3"),
        ((str(damaged), "a", *options), "damaged.mp4: cannot read the video"),
        ((str(clip), "a", CAP + 1, LONG_SIDE, 1, CHUNK), f"the frame cap must be between 1 and {CAP} here"),
        ((str(clip), "a", CAP, LONG_SIDE + 1, 1, CHUNK), f"the long side must be between 64 and {LONG_SIDE}"),
        ((str(clip), "a", CAP, LONG_SIDE, 1, CHUNK + 1), f"the chunk size must be between 1 and {CHUNK}"),
        ((str(clip), "a", CAP, LONG_SIDE, 1, 0), f"the chunk size must be between 1 and {CHUNK}"),
        ((str(clip), "a", CAP, LONG_SIDE, 1.5, CHUNK), "the stride must be a whole number"),
    ]
    for args, message in refusals:
        with pytest.raises(gr.Error) as refused:
            segment(*args, progress=progress)
        assert message in refused.value.message
        assert str(damaged.parent) not in refused.value.message  # the file as the user named it
        assert list(store.root.iterdir()) == []  # nothing left behind

    overlay, archive, status = segment(str(clip), "the red square", *options, progress=progress)
    assert status == "Segmented 3 frames."
    assert Path(overlay).parent.parent.parent == store.root and Path(archive).name == "masks.zip"
    image = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    assert segment(str(image), "the red square", *options, progress=progress)[2] == "Segmented 1 frame."


def test_the_result_store_keeps_a_bounded_number_for_a_bounded_time(tmp_path):
    from mpgsam2.app import ResultStore

    now = [0.0]
    store = ResultStore(tmp_path, max_results=2, max_age_s=10, clock=lambda: now[0])
    folders = []
    for _ in range(3):
        with store.request() as folder:
            (folder / "masks.zip").write_bytes(b"x")
            folders.append(folder)
    # the newest two: the oldest went when the third finished
    assert [f.exists() for f in folders] == [False, True, True]

    with pytest.raises(RuntimeError), store.request() as failed:
        raise RuntimeError("the model failed")
    assert not failed.exists()  # a failed request leaves nothing and removes nothing
    assert [f.exists() for f in folders] == [False, True, True]

    with store.request() as running:
        now[0] = 100.0  # every finished one is now too old; the running one is not touched
        assert store.prune() == folders[1:]
        assert running.exists()
    now[0] = 105.0
    assert store.prune() == [] and running.exists()
    now[0] = 111.0
    assert store.prune() == [running] and list(tmp_path.iterdir()) == []


def test_the_cleanup_thread_removes_old_results(tmp_path):
    from mpgsam2.app import ResultStore

    store = ResultStore(tmp_path, max_results=5, max_age_s=0.2)
    with store.request() as folder:
        (folder / "masks.zip").write_bytes(b"x")
    store.start(interval_s=0.05)
    try:
        _wait_for(lambda: not folder.exists(), 10, "the cleanup thread")
    finally:
        store.close()


def test_requests_wait_in_the_queue_one_at_a_time(serve, tmp_path, monkeypatch):
    from gradio_client import Client, handle_file

    import mpgsam2.app as app_module

    running, overlaps = [0], []
    real_segment = app_module.segment_to_folder
    lock = threading.Lock()

    def slow_segment(*args, **kwargs):
        with lock:
            running[0] += 1
            overlaps.append(running[0])
        time.sleep(1.0)  # long enough for the second request to start if the page ran them side by side
        try:
            return real_segment(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(app_module, "segment_to_folder", slow_segment)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    address, _ = serve(_limits())
    clip = tmp_path / "clip.mp4"
    render_demo_video(clip, num_frames=2, fps=12, size=40)
    client = Client(address, verbose=False)
    jobs = [
        client.submit(handle_file(str(clip)), "the red square", CAP, LONG_SIDE, 1, CHUNK) for _ in range(2)
    ]
    statuses = [job.result(timeout=120)[2] for job in jobs]
    assert statuses == ["Segmented 2 frames."] * 2
    assert overlaps == [1, 1]


def test_the_command_line_sets_the_page_limits(trained, monkeypatch):
    import mpgsam2.app as app_module

    served = {}

    def fake_launch(app, store, limits, **kwargs):
        served.update(app=app, store=store, limits=limits, kwargs=kwargs)

    monkeypatch.setattr(app_module, "launch", fake_launch)
    flags = ["--max-frames", "50", "--long-side", "640", "--stride", "2", "--chunk-size", "0"]
    flags += ["--max-upload-mb", "20", "--keep-results", "3", "--keep-minutes", "0.5", "--queue-size", "2"]
    assert app_module.main([str(trained[0]), "--port", "7999", *flags]) == 0
    limits = served["limits"]
    assert (limits.max_frames, limits.long_side, limits.stride, limits.chunk_size) == (50, 640, 2, 0)
    assert (limits.max_upload_bytes, limits.keep_results, limits.keep_seconds) == (20 * 1024 * 1024, 3, 30)
    assert served["kwargs"]["server_port"] == 7999
    assert not served["store"].root.exists()  # the request folders go with the server
    sliders = {
        c["props"]["elem_id"]: c["props"]
        for c in served["app"].config["components"]
        if c["props"].get("elem_id") in {"max_frames", "long_side", "stride", "chunk_size"}
    }
    assert {k: (v["value"], v["maximum"]) for k, v in sliders.items()} == {
        "max_frames": (50, 50),
        "long_side": (640, 640),
        "stride": (2, 30),
        "chunk_size": (0, 50),  # 0 (the whole video) is the default, any size up to the cap allowed
    }
    assert served["app"]._queue.max_size == 2
    with pytest.raises(SystemExit):
        app_module.main([str(trained[0]), "--max-frames", "0"])


def test_ci_runs_the_readme_test_command():
    """The README's command for all the tests is the one .ci/run runs, word for word, and it installs the browser
    the browser tests need; the command without the browser deselects them; the selections after them name only
    registered markers (an unknown name in ``-m`` would silently select nothing)."""
    import re

    root = Path(__file__).resolve().parents[2]
    commands = [line for line in (root / "README.md").read_text().splitlines() if "python -m pytest" in line]
    setup, selections = commands[:2], commands[2:]
    assert setup == [
        'python -m pytest -q -m "not browser"',
        "apt-get update && apt-get install -y chromium chromium-driver && python -m pytest -q",
    ]
    assert f"README_TEST_COMMAND='{setup[1]}'" in (root / ".ci" / "run").read_text().splitlines()
    # the entries of pyproject.toml's `markers = [...]`: "name: description"
    registered = set(re.findall(r'^\s*"([a-z_]+): ', (root / "pyproject.toml").read_text(), re.M))
    assert {"browser", "slow", "subprocess"} <= registered
    assert selections, "the README shows the marker selections"
    for line in selections:
        assert line.startswith("python -m pytest -q "), line
        for expression in re.findall(r'-m "([^"]*)"', line):
            words = set(re.findall(r"[a-z_]+", expression)) - {"and", "or", "not"}
            assert words <= registered, (line, words - registered)
