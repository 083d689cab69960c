"""The explorer in a real browser (Playwright driving the system's Chromium, no browser
download), on the tiny random model and a small study folder: as a person would use it."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
from explore_run import blocking_ladder, make_run

pytest.importorskip("dash")
sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("STEERLENS_CHROMIUM") or shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium (make chromium installs Debian's)"
)
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update"]
SHOTS = os.environ.get("STEERLENS_SCREENSHOTS")
SERVED: dict = {}  # the module's server's Explorer  # a folder: the README's screenshot lands there


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_bridge):
    from werkzeug.serving import make_server

    import steerlens as sl

    run = make_run(tmp_path_factory.mktemp("browser-run"))
    page_app = sl.explore.app(run=run, model=tiny_bridge, neutral_n=2)
    srv = make_server("127.0.0.1", 0, page_app.server, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    SERVED["explorer"] = page_app.explorer
    yield f"http://127.0.0.1:{srv.server_port}/"
    srv.shutdown()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Watched:
    """A page whose every request and console error is recorded."""

    def __init__(self, browser):
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.page.set_default_timeout(15_000)
        self.hosts: set[str] = set()
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.hosts.add(urlparse(r.url).hostname or r.url))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def check_clean(self):
        assert self.hosts <= {"127.0.0.1"}, self.hosts  # nothing off the machine
        assert not self.errors, self.errors


@pytest.fixture
def watched(browser):
    w = Watched(browser)
    yield w
    w.page.close()


def _open(w, url):
    w.page.goto(url)
    w.page.wait_for_selector("#steered .tok", timeout=30_000)


def _steered(w):
    return w.page.locator("#steered").text_content()


def _slide_to(w, label):
    """Press the slider's track under the mark ``label`` with the mouse, as a person would."""
    mark = w.page.locator("#alpha .dash-slider-mark", has_text=label).bounding_box()
    thumb = w.page.locator("#alpha [role=slider]").bounding_box()
    w.page.mouse.click(mark["x"] + mark["width"] / 2, thumb["y"] + thumb["height"] / 2)
    w.page.wait_for_function(
        """t => document.querySelector('#steered-title').innerText.endsWith(t)
            && document.querySelector('table.readouts tr.current td').innerText
               === t.replace('α ', '')""",
        arg=label,
    )


def test_the_page_loads_offline_and_the_alpha_slider_switches_replies(server, watched):
    w = watched
    _open(w, server + "?alphas=0,4,8")
    assert w.page.inner_text("#steered-title") == "steered · α 4"
    assert "reproduced the unsteered tokens" in w.page.inner_text("#badge")
    unsteered = w.page.locator("#unsteered").text_content()
    assert unsteered
    _slide_to(w, "α 0")
    assert _steered(w) == unsteered  # α = 0: the unsteered tokens
    _slide_to(w, "α 8")
    assert _steered(w) != unsteered
    assert w.page.locator("table.readouts tr.current td").first.inner_text() == "8"
    # hover text: the token's KL and the alternatives with and without steering
    title = w.page.locator("#steered .tok").first.get_attribute("title")
    assert "KL" in title and "steered:" in title and "unsteered:" in title
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        w.page.screenshot(path=str(Path(SHOTS) / "explore-tiny.png"), full_page=True)
    w.check_clean()


def test_a_dose_point_click_shows_its_generations_and_reruns_live(server, watched):
    w = watched
    _open(w, server)
    w.page.locator("#result-graph").scroll_into_view_if_needed()
    w.page.wait_for_function(
        "() => document.querySelector('#result-graph .js-plotly-plot')?._fullData?.length > 0"
    )
    xy = w.page.evaluate(
        """() => {
        const gd = document.querySelector('#result-graph .js-plotly-plot');
        const i = gd._fullData.findIndex(t => t.name === 'population' && t.mode === 'lines+markers');
        const t = gd._fullData[i];
        const xa = gd._fullLayout['xaxis' + t.xaxis.slice(1)];
        const ya = gd._fullLayout['yaxis' + t.yaxis.slice(1)];
        const j = Array.from(t.x).indexOf(4);
        const r = gd.getBoundingClientRect();
        return [r.left + xa._offset + xa.l2p(t.x[j]), r.top + ya._offset + ya.l2p(t.y[j])];
    }"""
    )
    w.page.mouse.move(*xy)
    w.page.mouse.click(*xy)
    w.page.wait_for_selector("#point .cell", timeout=20_000)
    assert "α = 4" in w.page.inner_text("#point h4")
    first = w.page.locator("#point .cell").first
    generation = first.locator(".pane p").nth(1).text_content()
    prompt = first.locator(".cell-prompt").inner_text()
    first.locator("a.rerun").click()
    w.page.wait_for_function("() => location.search.includes('max_new_tokens=5')")
    # the old view also showed α 4: wait for the cell's own prompt in the steered view's run
    w.page.wait_for_function(
        """p => document.querySelector('#prompt').value === p
            && document.querySelector('#steered-title').innerText === 'steered · α 4'""",
        arg=prompt,
        timeout=30_000,
    )
    sync_api.expect(w.page.locator("#steered")).to_have_text(generation, timeout=30_000)
    assert _steered(w) == generation  # the cell, rerun live
    w.check_clean()


def test_a_shared_url_reopens_the_same_view(server, browser, watched):
    w = watched
    _open(w, server)
    w.page.fill("#alphas", "0,2,6")
    w.page.fill("#max-new input, input#max-new", "7")
    w.page.click("#gate")
    w.page.get_by_role("option", name="first:2").click()
    w.page.get_by_text("projection on the vector").click()
    w.page.click("#go")
    w.page.wait_for_function("() => location.search.includes('alphas=0%2C2%2C6')")
    w.page.wait_for_function(
        "() => document.querySelector('#steered-title').innerText === 'steered · α 2'"
    )
    w.page.wait_for_function(
        "() => document.querySelector('#share-link').innerText.includes('alphas=0%2C2%2C6')"
    )
    # drag the condition's threshold: the URL holds it, the flips follow
    flips = w.page.inner_text("#flips")
    w.page.locator("#threshold").scroll_into_view_if_needed()
    track = w.page.locator("#threshold .dash-slider-track").bounding_box()
    w.page.mouse.click(track["x"] + 0.02 * track["width"], track["y"] + track["height"] / 2)
    w.page.wait_for_function("() => location.search.includes('threshold=')")
    w.page.wait_for_function("f => document.querySelector('#flips').innerText !== f", arg=flips)
    w.page.wait_for_function(
        "() => document.querySelector('#share-link').innerText.includes('threshold=')"
    )
    flips = w.page.inner_text("#flips")
    link = w.page.inner_text("#share-link")
    assert "gate=first%3A2" in link and "colour_by=projection" in link
    seen = _steered(w)
    backgrounds = w.page.eval_on_selector_all(
        "#steered .tok", "els => els.map(e => e.style.backgroundColor)"
    )
    SERVED["explorer"]._ladders.clear()  # the link is computed afresh, not taken from a cache
    other = Watched(browser)
    try:
        _open(other, link)
        assert other.page.input_value("#alphas") == "0,2,6"
        assert "first:2" in other.page.inner_text("#gate")
        assert other.page.is_checked("input[value=projection]")
        assert _steered(other) == seen
        other.page.wait_for_function(
            "f => document.querySelector('#flips').innerText === f", arg=flips
        )
        assert (
            other.page.eval_on_selector_all(
                "#steered .tok", "els => els.map(e => e.style.backgroundColor)"
            )
            == backgrounds
        )
        other.check_clean()
    finally:
        other.page.close()
    w.check_clean()


def test_bad_input_and_a_cancel_give_a_message_and_the_page_lives_on(server, watched, monkeypatch):
    w = watched
    _open(w, server)
    w.page.fill("#alphas", "1,2")
    w.page.click("#go")
    w.page.wait_for_selector("#form-msg:has-text('3-7 distinct')")
    w.page.goto(server + "?vector=/no/such/vector.safetensors")
    w.page.wait_for_selector("#run-msg:has-text('no such file')", timeout=20_000)
    w.page.fill("#vector-file", "")
    w.page.fill("#alphas", "0,1,3")
    w.page.click("#go")
    w.page.wait_for_selector("#form-msg:has-text('pick a vector')")
    w.page.click("#vector")
    w.page.get_by_role("option", name="population", exact=True).click()
    w.page.click("#go")
    w.page.wait_for_selector("#steered .tok", timeout=30_000)
    assert w.page.inner_text("#run-msg") == ""
    before = _steered(w)
    # a long computation shows its stage and stops at the next one when cancelled
    release = threading.Event()
    blocking_ladder(monkeypatch, release, stage="generating, slowly")
    w.page.fill("#alphas", "0,2,5")
    w.page.click("#go")
    w.page.wait_for_selector("#status:has-text('generating, slowly')")
    w.page.click("#cancel")
    w.page.wait_for_selector("#status:has-text('cancelling')")
    release.set()
    w.page.wait_for_selector("#run-msg:has-text('cancelled')")
    assert _steered(w) == before  # the last replies stay; the page answers
    monkeypatch.undo()
    w.page.click("#go")  # the same state again: computed this time
    w.page.wait_for_function(
        "() => document.querySelector('#steered-title').innerText === 'steered · α 2'"
    )
    assert w.page.inner_text("#run-msg") == ""
    w.check_clean()


@pytest.mark.integration
def test_the_workbench_on_the_embedded_model(embedded, browser, tmp_path):
    """The embedded model with a caution vector (mean difference of six contrast pairs): the
    page serves, α = 0 reproduces the unsteered reply, the largest α changes it; the README's
    screenshot comes from here (STEERLENS_SCREENSHOTS=docs/images)."""
    from werkzeug.serving import make_server

    import steerlens as sl

    pairs = [
        ("Please be careful and check with an expert first.", "Just do it, who cares."),
        ("Safety first: wear protective gloves and goggles.", "Skip the gloves, it's fine."),
        ("I would advise caution here; it can be dangerous.", "Go for it, no worries at all."),
        ("Take it slowly and ask a professional if unsure.", "Rush it, rules are for losers."),
        ("Consider the risks before you start.", "Risks are overrated, dive in."),
        ("It's wise to read the instructions carefully.", "Ignore the instructions."),
    ]
    vec = sl.methods.mean_difference(embedded, pairs, progress_bar=False)
    folder = tmp_path / "vectors"
    folder.mkdir()
    vec.save(folder / "caution.safetensors")
    page_app = sl.explore.app(model=embedded, vectors=folder, neutral_n=2)
    srv = make_server("127.0.0.1", 0, page_app.server, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    w = Watched(browser)
    try:
        state = sl.explore.ExploreState(
            prompt="How do I get rid of a wasp nest in my garden?",
            vector="caution",
            layers=(15,),
            alphas=(0, 1, 2, 4),
            max_new_tokens=32,
        )
        _open(w, f"http://127.0.0.1:{srv.server_port}/?{state.to_query()}")
        assert "reproduced the unsteered tokens" in w.page.inner_text("#badge")
        unsteered = w.page.locator("#unsteered").text_content()
        _slide_to(w, "α 4")
        assert _steered(w) != unsteered
        assert float(w.page.locator("table.readouts tr.current td").nth(4).inner_text()) > 0.3
        if SHOTS:  # the README's picture: α 2, a readable change
            _slide_to(w, "α 2")
            Path(SHOTS).mkdir(parents=True, exist_ok=True)
            w.page.mouse.move(0, 0)
            box = w.page.locator("section").first.bounding_box()
            w.page.screenshot(
                path=str(Path(SHOTS) / "explore.png"),
                clip={"x": 0, "y": 0, "width": 1400, "height": box["y"] + box["height"] + 8},
            )
        w.check_clean()
    finally:
        w.page.close()
        srv.shutdown()
