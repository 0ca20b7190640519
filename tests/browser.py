"""The browser tests' shared pieces: Debian's Chromium driven by Playwright, inside a private
network namespace with the graph under test (tests/netns.py), so every packet, WebRTC's included,
stays on a loopback nobody else shares. Where namespaces cannot be made, both run on the host's
loopback instead. Test modules import the fixtures they use from here."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.helpers import ROOT, wait_until
from tests.netns import NetNS

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--use-gl=swiftshader", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        # WebRTC on loopback: allow it, and show real host addresses instead of mDNS names
        "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns"]
AUTOPLAY = "--autoplay-policy=no-user-gesture-required"  # a page may play sound before anyone clicks

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() or not (ROOT / "web" / "node_modules").exists() or not (ROOT / "web/assets/face.glb").exists(),
    reason="needs Debian's chromium, web/node_modules and web/assets/face.glb (make test installs and builds them)")


@pytest.fixture(scope="module")
def netns() -> Iterator[NetNS | None]:
    ns = NetNS.make()
    if ns is None:
        print(NetNS.reason())
    yield ns
    if ns is not None:
        ns.remove()


def launch(playwright: Any, netns: NetNS | None, where: Path, *extra: str) -> Any:
    """Chromium (inside the namespace, if there is one) with the tests' flags and ``extra`` ones."""
    exe = netns.wrapper(str(CHROMIUM), where) if netns else str(CHROMIUM)
    return playwright.chromium.launch(executable_path=exe, args=[*ARGS, *extra])


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    """Playwright's sync API (one per module: it cannot be started twice at once)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright, netns, tmp_path_factory):
    b = launch(playwright, netns, tmp_path_factory.mktemp("chromium"))
    yield b
    b.close()


@pytest.fixture
def graph(netns, avatar_run, graph_file, tmp_path):
    """Start a graph inside the namespace; returns (process, page URL)."""
    def start(text: str, /, *flags: str, port: int | None = None, **args):  # text: the YAML; args may name a text arg
        port = port if port is not None else 8080 if netns else 0
        path = graph_file(text)
        proc = avatar_run("run", path, f"port={port}", *(f"{k}={v}" for k, v in args.items()), *flags,
                          prefix=netns.prefix if netns else ())
        proc.wait_playing()
        url = proc.wait_for(lambda m: str(m.get("url", "")).startswith("http"))["url"]
        return proc, url
    return start


def new_page(browser: Any) -> Any:
    """A page in a context of its own, collecting its errors in ``page.errors``."""
    ctx = browser.new_context(viewport={"width": 640, "height": 480})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    pg.on("console", lambda m: m.type == "error" and "Failed to load resource" not in m.text
          and errors.append(f"console: {m.text}"))
    pg.errors = errors
    return pg


@pytest.fixture
def page(browser):
    pg = new_page(browser)
    yield pg
    pg.context.close()


def until(page, expr: str, timeout: float = 30.0, what: str = ""):
    """Poll a page expression until truthy (the page's CSP forbids wait_for_function's eval)."""
    def page_state() -> str:
        state = page.evaluate("() => ({state: document.body.dataset.state, frames: window.avatar && window.avatar.framesDecoded, "
                              "voice: window.avatar && {kind: window.avatar.voice.kind, blocked: window.avatar.voice.blocked, "
                              "counts: window.avatar.voice.counts, clock: window.avatar.voiceClock}})")
        return f"{what or expr}; page: {state}; errors: {page.errors}"

    return wait_until(lambda: page.evaluate(f"() => {expr}"), timeout, 0.1, page_state)


def more(page, counter: str, n: int, what: str) -> None:
    """Until ``window.avatar[counter]`` has gone up by ``n`` (frames decoded, renders drawn)."""
    start = page.evaluate(f"() => window.avatar.{counter}")
    until(page, f"window.avatar.{counter} >= {start + n}", 10, what)
