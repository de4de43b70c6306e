"""The gate explorer page in headless Chromium, against a real server process.

One server (it trains the three defaults on its empty store, as a first start does) and one
browser serve the whole module. Every page records each request and console message; the
views mark themselves `data-state="ready"` once drawn, which is what the tests wait for.
Screenshots land in build/ui-screenshots/. Waits are arrow functions, never bare expressions:
the page's Content-Security-Policy forbids the eval Playwright would use for those.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.bench_ui import CHROMIUM, LAUNCH_ARGS
from tests.helpers import REPO, TINY_TEXT, ServerProcess, make_comparison_report

pytestmark = [
    pytest.mark.numerics,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (make system-deps)"
    ),
]
sync_api = pytest.importorskip("playwright.sync_api")

KEY = "ui-test-key"
SHOTS = REPO / "build" / "ui-screenshots"
WAIT_MS = 60_000


class Recorder:
    """Every request and every console error or uncaught exception of one page."""

    def __init__(self, page, origin: str) -> None:  # type: ignore[no-untyped-def]
        self.origin = origin
        self.requests: list[str] = []
        self.blocked: list[str] = []  # refused by the page's Content-Security-Policy
        self.errors: list[str] = []
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("requestfailed", lambda r: r.failure == "csp" and self.blocked.append(r.url))
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def foreign(self) -> list[str]:
        """Requests that left for another origin (a request the browser refused never did)."""
        # blob: URLs made by the page itself (ReDoc's worker) are the page's own origin.
        own = (self.origin + "/", f"blob:{self.origin}/", "data:")
        return [u for u in self.requests if not u.startswith(own) and u not in self.blocked]

    def script_errors(self) -> list[str]:
        # A 4xx the page asked for on purpose is logged by Chromium as "Failed to load resource".
        return [e for e in self.errors if not e.startswith("Failed to load resource")]


def wait_all_models(server: ServerProcess, names: set[str], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = {m["name"] for m in httpx.get(server.url + "/models").json()["models"]}
        if names <= got:
            return
        time.sleep(0.5)
    raise TimeoutError(f"models {names} not all served:\n{server.log()[-3000:]}")


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_comparison_report(tmp_path_factory.mktemp("compare"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, comparison: Path) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("ui") / "models"
    s = ServerProcess(store, "--api-key", KEY, "--comparison-report", str(comparison))
    try:
        s.wait_ready(timeout=600)
        wait_all_models(s, {"rnn", "lstm", "gru"})
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield b
        b.close()


def open_page(browser, server: ServerProcess):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.rec = Recorder(page, server.url)  # type: ignore[attr-defined]
    return page


@pytest.fixture
def page(browser, server: ServerProcess) -> Iterator:
    page = open_page(browser, server)
    yield page
    page.context.close()


def shot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def predict_ready(page, text: str | None = None, n: int = 3) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_function(
        """([n, text]) => {
            const cols = [...document.querySelectorAll('.predict-column')];
            return cols.length === n && cols.every((c) =>
                c.dataset.state !== 'loading' && c.dataset.text !== undefined &&
                (text === null || c.dataset.text === text));
        }""",
        arg=[n, text],
    )


READY = {
    "predict": None,
    "gates": "#gate-columns[data-state=ready]",
    "longrange": "#longrange-chart[data-state=ready]",
    "train": "#train-form",
    "models": "#models-list[data-state=ready]",
    "compare": "#compare-report[data-state=ready]",
}


def test_every_view_loads_without_errors_or_other_origins(page, server: ServerProcess) -> None:
    page.goto(server.url + "/")
    predict_ready(page)
    for view, ready in READY.items():
        page.click(f"nav a[data-view={view}]")  # in-page navigation, as a user would
        if ready:
            page.wait_for_selector(ready)
        else:
            predict_ready(page)
        if view == "longrange":
            page.wait_for_selector("#longrange-gates[data-state=ready]")
        assert page.evaluate("location.pathname") == f"/ui/{view}"
    page.goto(server.url + "/ui/models")  # and a view's own address loads it directly
    page.wait_for_selector(READY["models"])
    assert page.rec.requests and not page.rec.foreign(), page.rec.foreign()
    assert not page.rec.blocked and not page.rec.errors, (page.rec.blocked, page.rec.errors)


def test_typing_updates_all_three_models(page, server: ServerProcess) -> None:
    page.goto(server.url + "/")
    predict_ready(page, "i grew up in france . the clouds are in the sky . i speak fluent")
    text = "i grew up in spain . atlantis sleeps on the warm mat . i speak fluent"
    box = page.locator("#predict-text")
    box.fill(text[:-7])
    box.press_sequentially(text[-7:])  # key by key: the debounce sends one request at the end
    predict_ready(page, text)
    columns = page.locator(".predict-column")
    shown = {}
    for i in range(columns.count()):
        col = columns.nth(i)
        shown[col.get_attribute("data-model")] = col.locator(".top-word").inner_text()
        assert col.locator(".tok.unk").all_inner_texts() == ["atlantis"]
    assert set(shown) == {"rnn", "lstm", "gru"}
    for model, word in shown.items():
        r = httpx.post(server.url + "/predict", json={"model": model, "text": text})
        assert r.json()["predictions"][0]["word"] == word, model
    assert shown["lstm"] == shown["gru"] == "spanish"
    shot(page, "predict")
    assert not page.rec.script_errors()


def hover_cell(page, canvas, t: int, row: int) -> dict[str, str]:  # type: ignore[no-untyped-def]
    size = canvas.evaluate("c => [c.width, c.height]")
    box = canvas.bounding_box()
    cw, ch = (box["width"] - 2) / size[0], (box["height"] - 2) / size[1]  # 1 px border
    # Scrolls the canvas into view first; the position is from its border box's corner.
    canvas.hover(position={"x": 1 + (t + 0.5) * cw, "y": 1 + (row + 0.5) * ch})
    page.wait_for_function(
        "([t, r]) => { const d = document.getElementById('tooltip').dataset;"
        " return !document.getElementById('tooltip').hidden && d.t === String(t); }",
        arg=[t, row],
    )
    return page.evaluate("({...document.getElementById('tooltip').dataset})")


def test_heat_map_cells_and_hovered_values(page, server: ServerProcess) -> None:
    page.goto(server.url + "/ui/gates")
    page.wait_for_selector(READY["gates"])
    text = page.input_value("#gates-text")
    # A map this small is fetched unrounded: the hover shows /gates' own float.
    want = httpx.get(server.url + "/gates", params={"model": "lstm", "text": text}).json()
    T, H = len(want["tokens"]), len(want["layers"][0]["gates"]["forget"][0])
    canvases = page.locator("#gate-columns canvas.heatmap")
    assert canvases.count() == 6  # input, forget, candidate, output, cell, hidden
    for i in range(6):
        assert canvases.nth(i).evaluate("c => [c.width, c.height]") == [T, H]
    for gate, t, unit in (("forget", 4, 10), ("cell", T - 1, H - 3), ("input", 0, 0)):
        canvas = page.locator(f"#gate-columns canvas.heatmap[data-gate={gate}]")
        got = hover_cell(page, canvas, t, unit)
        assert (got["gate"], int(got["t"]), int(got["unit"])) == (gate, t, unit)
        assert float(got["value"]) == want["layers"][0]["gates"][gate][t][unit]
    # The first 16 units in index order: only those are fetched (/gates' `units`).
    page.select_option("#gates-limit", "16")
    page.wait_for_function(
        "() => document.getElementById('gate-columns').dataset.state === 'ready' &&"
        " document.querySelector('canvas.heatmap[data-gate=forget]').height === 16"
    )
    assert any("units=0-15" in u for u in page.rec.requests if "/gates?" in u)
    got = hover_cell(page, page.locator("canvas.heatmap[data-gate=output]"), 2, 5)
    assert float(got["value"]) == want["layers"][0]["gates"]["output"][2][5]
    page.select_option("#gates-limit", "0")
    # Sorted by variance of the cell state: the top row is the unit Python finds too.
    page.select_option("#gates-sort", "variance")
    page.select_option("#gates-sort-gate", "cell")
    page.wait_for_function(
        "() => document.getElementById('gate-columns').dataset.state === 'ready' &&"
        " document.querySelector('canvas.heatmap[data-gate=forget]').height > 16"
    )
    cell = want["layers"][0]["gates"]["cell"]
    variances = []
    for u in range(H):
        col = [row[u] for row in cell]
        mean = sum(col) / T
        variances.append(sum((x - mean) ** 2 for x in col) / T)
    top = max(range(H), key=lambda u: variances[u])
    canvas = page.locator("#gate-columns canvas.heatmap[data-gate=cell]")
    assert int(hover_cell(page, canvas, 2, 0)["unit"]) == top
    canvas.click(position={"x": 5, "y": 2})
    page.wait_for_selector(f"#unit-chart[data-unit='{top}'] svg path.series")
    # Two models side by side on the same text.
    page.select_option("#gates-compare", "gru")
    page.wait_for_function(
        "() => document.querySelectorAll('#gate-columns .gate-column').length === 2 &&"
        " document.getElementById('gate-columns').dataset.state === 'ready'"
    )
    gru = page.locator(".gate-column[data-model=gru] canvas.heatmap")
    assert gru.count() == 4  # reset, update, candidate, hidden
    shot(page, "gates")
    assert not page.rec.script_errors()


def test_long_range_view_shows_lstm_and_gru_above_rnn(page, server: ServerProcess) -> None:
    page.goto(server.url + "/ui/longrange")
    page.wait_for_selector(READY["longrange"])
    page.wait_for_selector("#longrange-gates[data-state=ready]")
    rows = page.evaluate(
        """() => Object.fromEntries(
            [...document.querySelectorAll('#longrange-table tr[data-model]')]
            .map((tr) => [tr.dataset.model,
                [...tr.querySelectorAll('td[data-gap]')].map((td) => +td.dataset.prob)]))"""
    )
    assert set(rows) == {"rnn", "lstm", "gru"}
    gaps = len(rows["rnn"])
    assert gaps >= 5
    for gap in range(1, gaps):  # gap 0 is not a long-range prompt
        assert rows["lstm"][gap] > rows["rnn"][gap] + 0.3, (gap, rows)
        assert rows["gru"][gap] > rows["rnn"][gap] + 0.3, (gap, rows)
    # Computed live from the served models: gap 3 again, straight from /predict.
    prompts = httpx.get(server.url + "/ui/config.json").json()["long_range"][3]["prompts"]
    r = httpx.post(
        server.url + "/predict",
        json={"model": "lstm", "texts": [p["text"] for p in prompts], "top_k": 50},
    ).json()
    probs = [
        next((q["prob"] for q in res["predictions"] if q["word"] == p["language"]), 0.0)
        for res, p in zip(r["results"], prompts, strict=True)
    ]
    assert rows["lstm"][3] == pytest.approx(sum(probs) / len(probs), abs=1e-9)
    panels = page.locator(".carrier-panel")
    assert sorted(panels.evaluate_all("ps => ps.map((p) => p.dataset.model)")) == ["gru", "lstm"]
    for units in panels.evaluate_all("ps => ps.map((p) => p.dataset.units)"):
        assert len(units.split(",")) == 6
    shot(page, "longrange")
    assert not page.rec.script_errors()


def loss_points(page) -> int:  # type: ignore[no-untyped-def]
    return int(page.get_attribute("#train-loss", "data-points") or 0)


def test_training_from_the_page(page, server: ServerProcess) -> None:
    page.goto(server.url + "/ui/train")
    page.fill("#api-key", KEY)
    page.fill("#train-name", "ui-gru")
    page.fill("#train-hidden", "16")
    page.fill("#train-epochs", "3")
    page.click("#train-start")
    page.wait_for_function("() => +document.getElementById('train-loss').dataset.points >= 2")
    first = loss_points(page)
    page.wait_for_function(
        "n => +document.getElementById('train-loss').dataset.points > n", arg=first
    )
    page.wait_for_selector("#train-version:not([hidden])", timeout=180_000)
    assert page.get_attribute("#train-version", "data-name") == "ui-gru"
    assert page.get_attribute("#train-status", "data-status") == "succeeded"
    assert int(page.get_attribute("#train-ppl", "data-points") or 0) == 3  # one per epoch
    shot(page, "train")
    # The new model is in the pickers of the other views, without a reload.
    page.click("nav a[data-view=gates]")
    page.wait_for_selector("#gates-model option[value=ui-gru]", state="attached")
    served = {m["name"]: m["version"] for m in httpx.get(server.url + "/models").json()["models"]}
    assert served["ui-gru"] == 1
    page.click("nav a[data-view=models]")
    page.wait_for_selector(".version[data-name=ui-gru] svg path.series")
    # The comparison chart has one line per served model with a recorded curve.
    with_curve = 0
    for name, version in served.items():
        info = httpx.get(f"{server.url}/models/{name}").json()
        kept = next(v for v in info["versions"] if v["version"] == version)
        with_curve += any(h.get("val_ppl") is not None for h in kept.get("history") or [])
    compared = int(page.get_attribute("#models-compare", "data-series") or 0)
    assert compared == with_curve >= 4  # the three defaults and ui-gru at least
    assert page.locator("#models-compare path.series").count() == compared
    shot(page, "models")
    # A second job, on an uploaded text file, cancelled from the page.
    page.click("nav a[data-view=train]")
    page.fill("#train-name", "ui-cancelled")
    page.fill("#train-epochs", "100")
    page.fill("#train-hidden", "32")
    page.select_option("#train-source", "file")
    corpus = (TINY_TEXT * 800).encode()  # ~30k tokens an epoch: a minute of work, not seconds
    page.set_input_files(
        "#train-file", files=[{"name": "corpus.txt", "mimeType": "text/plain", "buffer": corpus}]
    )
    page.click("#train-start")
    page.wait_for_function("() => +document.getElementById('train-loss').dataset.points >= 1")
    assert page.get_attribute("#train-status", "data-status") in ("queued", "running")
    page.click("#train-cancel")
    page.wait_for_selector("#train-status[data-status=cancelled]")
    jobs = httpx.get(server.url + "/jobs").json()["jobs"]
    cancelled = next(j for j in jobs if j["name"] == "ui-cancelled")
    assert cancelled["status"] == "cancelled" and cancelled["corpus"], cancelled
    assert not page.rec.script_errors()


def error_shown(page, selector: str, status: int) -> str:  # type: ignore[no-untyped-def]
    page.wait_for_selector(f"{selector}[data-status='{status}']:not([hidden])")
    return page.inner_text(selector)


def test_the_compare_view_draws_the_report(page, server: ServerProcess, comparison: Path) -> None:
    report = json.loads(comparison.read_text(encoding="utf-8"))
    page.goto(server.url + "/ui/compare")
    page.wait_for_selector("#compare-report[data-state=ready]")
    rows = "#compare-table tr[data-arch]"
    archs = page.eval_on_selector_all(rows, "rs => rs.map(r => r.dataset.arch)")
    assert archs == [k["arch"] for k in report["kinds"]] == ["rnn", "lstm", "gru"]
    assert page.inner_text("#compare-verdict") == report["verdict"]
    by_key = "cs => Object.fromEntries(cs.map(c => [c.dataset.key, c.textContent]))"
    for kind in report["kinds"]:
        shown = page.eval_on_selector_all(f"{rows}[data-arch={kind['arch']}] td", by_key)
        assert shown["val_ppl"] == f"{kind['val_ppl']:.1f}"
        assert shown["steps"] == str(kind["steps"])
    points = sum(len(k["curve"]) for k in report["kinds"])
    for chart in ("#compare-by-epoch", "#compare-by-seconds"):
        assert page.get_attribute(chart, "data-points") == str(points)
        assert page.locator(f"{chart} path.series").count() == 3
    gaps = sum(len(k["long_range_by_gap"]) for k in report["kinds"])
    assert page.get_attribute("#compare-gaps", "data-points") == str(gaps)
    assert report["setup"]["machine"] in page.inner_text("#compare-setup")
    shot(page, "compare")
    assert not page.rec.script_errors() and not page.rec.foreign()


def test_api_errors_are_shown_in_place(page, server: ServerProcess) -> None:
    page.goto(server.url + "/ui/train")
    page.fill("#train-name", "no-key")
    page.click("#train-start")  # no API key entered
    assert "401" in error_shown(page, "#train-error", 401)
    assert "missing or wrong API key" in page.inner_text("#train-error")
    shot(page, "error-401")
    long_text = "the sky is blue . " * 130  # 650 tokens, over /gates' 512
    page.click("nav a[data-view=gates]")
    page.wait_for_selector(READY["gates"])
    page.fill("#gates-text", long_text)
    page.press("#gates-text", "Enter")
    shown = error_shown(page, "#gates-error", 413)
    api = httpx.get(server.url + "/gates", params={"model": "lstm", "text": long_text, "layers": 0})
    assert api.status_code == 413 and api.json()["message"] in shown
    shot(page, "error-413")
    assert not page.rec.script_errors()


def test_503_while_no_model_is_loaded(browser, tmp_path: Path, tiny_store: Path) -> None:
    empty = ServerProcess(tmp_path / "models", "--no-bootstrap")
    try:
        empty.wait_ready(path="/healthz")
        page = open_page(browser, empty)
        page.goto(empty.url + "/")
        shown = error_shown(page, ".predict-column .error", 503)
        api = httpx.post(empty.url + "/predict", json={"text": "i speak"})
        assert api.status_code == 503 and api.json()["message"] in shown
        assert "503" in error_shown(page, "#banner", 503)
        shot(page, "error-503")
        # A model lands in the store (whole, by rename): the page notices and starts over.
        staged = tmp_path / "staged"
        shutil.copytree(tiny_store / "lstm", staged)
        staged.rename(empty.model_dir / "lstm")
        page.wait_for_selector(".predict-column[data-state=ready][data-model=lstm]")
        page.wait_for_selector("#banner", state="hidden")
        # Started without --comparison-report: the Compare view says how to make a report.
        page.click("nav a[data-view=compare]")
        shown = error_shown(page, "#compare-error", 404)
        assert "python -m models.compare" in shown and "--comparison-report" in shown
        assert not page.rec.script_errors() and not page.rec.foreign()
        page.context.close()
    finally:
        empty.stop()


def test_api_docs_render_offline(page, server: ServerProcess) -> None:
    page.goto(server.url + "/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "Gatehouse" in page.inner_text(".swagger-ui .info .title")
    page.wait_for_function("() => document.querySelectorAll('.swagger-ui .opblock').length >= 10")
    shot(page, "docs")
    page.goto(server.url + "/redoc")
    page.wait_for_function(
        "() => document.querySelector('h1') && /Gatehouse/.test(document.body.innerText)"
    )
    page.wait_for_selector("redoc .menu-content")  # the sidebar, where ReDoc's logo would go
    assert not page.rec.foreign(), page.rec.foreign()
    assert set(page.rec.blocked) <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}
    # ReDoc's logo from its vendor's CDN is refused by the page's policy (and hides itself).
    refused = [e for e in page.rec.errors if "Content Security Policy" in e]
    assert all("cdn.redoc.ly" in e for e in refused), refused
    assert not [e for e in page.rec.errors if e not in refused], page.rec.errors
