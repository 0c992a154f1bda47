"""The console in a real headless Chromium, on each broker: overview, filter, one message,
an action refused without the token, then a group replayed after signing in (it leaves the
parking lot and arrives in the work queue). Screenshots of the overview and of a message
page are written to the test's tmp dir, and to dlq_router/console/static/screenshots/ when
DLQ_ROUTER_SCREENSHOTS=1 (how the README's pictures are made)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from dlq_router.topology import Topology
from tests.conftest import TopologyFactory, route_dict
from tests.integration.console_process import TOKEN, ConsoleProcess
from tests.integration.drivers import wait_for
from tests.integration.parking_support import (
    ParkDriver,
    Parked,
    RabbitParkDriver,
    RedisParkDriver,
    write_topology,
)

pytestmark = pytest.mark.browser
HOUR = 3_600_000
SHOTS = Path(__file__).resolve().parents[2] / "dlq_router" / "console" / "static" / "screenshots"


class Lot:
    def __init__(self, topology: Topology, driver: ParkDriver, console: ConsoleProcess) -> None:
        self.topology, self.driver, self.console = topology, driver, console
        self.route = topology.routes[0]

    def url(self, path: str) -> str:
        return self.console.base + path


def park_sample(driver: ParkDriver, topology: Topology) -> None:
    t = int(time.time() * 1000)
    body = b'{"to": "ada@example.com", "template": "welcome", "args": [42]}'
    pickle_body = b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00\x8c\x07welcome\x94."
    driver.park(
        topology.routes[0],
        [
            Parked("old1", parked_at=t - 2 * HOUR, error_type="TimeoutError", body=body),
            Parked("a1", parked_at=t - 5000, body=body),
            Parked("v1", parked_at=t - 4000, error_type="ValueError", reason="non_retryable"),
            Parked("a2", parked_at=t - 3000, body=body),
            Parked(
                "v2",
                parked_at=t - 2000,
                error_type="ValueError",
                reason="non_retryable",
                body=pickle_body,
                content_type="application/x-python-serialize",
                content_encoding="binary",
            ),
            Parked("a3", parked_at=t - 1000, body=body),
        ],
    )


def follow(browser: webdriver.Chrome, element: WebElement) -> None:
    """Click something that loads a new page and wait until it has (a click returns before
    the next page is there, so reading right after it could see the old one)."""
    # A mark on the old page's window object: a new page has a new window object without it.
    # Waiting for the old <html> element to go stale is not enough: while the page changes,
    # chromedriver sometimes answers that check with an "unknown error" (the node "does not
    # belong to the document") instead of a stale-element error.
    browser.execute_script("window.__dlqOldPage = true")
    element.click()
    WebDriverWait(browser, 30, ignored_exceptions=(WebDriverException,)).until(
        lambda b: b.execute_script(
            "return window.__dlqOldPage === undefined && document.readyState === 'complete'"
        )
    )


class ConsoleInBrowser:
    kind: str

    @pytest.fixture
    def lot(self, make_topology: TopologyFactory, uid: str, tmp_path: Path) -> Iterator[Lot]:
        topology = make_topology(self.kind, routes=[route_dict("orders-" + uid)])
        if self.kind == "rabbitmq":
            driver: ParkDriver = RabbitParkDriver(topology)
        else:
            from dlq_router.backends import open_backend

            backend = open_backend(topology)
            backend.declare(dry_run=False)
            backend.close()
            driver = RedisParkDriver(topology)
        park_sample(driver, topology)
        path = write_topology(topology, tmp_path / "topology.yaml")
        console = ConsoleProcess(path, tmp_path).start()
        try:
            yield Lot(topology, driver, console)
        finally:
            console.close()
            driver.close()

    def shot(self, browser: webdriver.Chrome, tmp_path: Path, name: str) -> None:
        path = tmp_path / f"{self.kind}-{name}.png"
        assert browser.save_screenshot(str(path)) and path.stat().st_size > 10_000
        if os.environ.get("DLQ_ROUTER_SCREENSHOTS") == "1" and self.kind == "rabbitmq":
            SHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, SHOTS / f"{name}.png")

    def test_console_end_to_end(self, lot: Lot, browser: webdriver.Chrome, tmp_path: Path) -> None:
        route = lot.route.name
        browser.get(lot.url("/healthz"))
        browser.delete_all_cookies()

        # overview: the route with its six parked messages and its largest group
        browser.get(lot.url("/"))
        row = browser.find_element(By.ID, f"route-{route}")
        assert row.find_element(By.CSS_SELECTOR, "td.parked").text.strip() == "6"
        assert "3 \N{MULTIPLICATION SIGN} ConnectionError / max_attempts" in row.text
        # the broker password never shows (user and password are both "guest" here)
        assert "guest:guest" not in browser.page_source
        if self.kind == "rabbitmq":
            assert "guest:***@" in browser.page_source
        self.shot(browser, tmp_path, "overview")

        # parked list, filtered by error type through the form
        browser.get(lot.url(f"/routes/{route}/parked"))
        assert len(browser.find_elements(By.CSS_SELECTOR, "#parked tr.msg")) == 6
        browser.find_element(By.NAME, "error_type").send_keys("ValueError")
        follow(browser, browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]"))
        ids = [r.text.split()[0] for r in browser.find_elements(By.CSS_SELECTOR, "#parked tr.msg")]
        assert ids == ["v2", "v1"]

        # one message: a pickle body is shown as hex, never unpickled
        follow(browser, browser.find_element(By.LINK_TEXT, "v2"))
        assert "never unpickled" in browser.find_element(By.TAG_NAME, "h2").text + (
            browser.page_source
        )
        assert "80 04 95" in browser.find_element(By.ID, "body").text
        assert "non_retryable" in browser.find_element(By.ID, "history").text
        browser.get(lot.url(f"/routes/{route}/messages/a3"))
        assert '"ada@example.com"' in browser.find_element(By.ID, "body").text
        self.shot(browser, tmp_path, "message")

        # replaying a group without the token is refused, and nothing moves
        browser.get(lot.url(f"/routes/{route}/groups"))
        group = browser.find_element(By.XPATH, "//tr[td[3][text()='ValueError']]")
        follow(browser, group.find_element(By.TAG_NAME, "button"))
        assert "sign in" in browser.find_element(By.ID, "error").text
        assert len(lot.driver.parked_ids(lot.route)) == 6
        assert lot.driver.work_depth(lot.route) == 0

        # sign in with the token, replay the ValueError group: it leaves the list and
        # arrives in the work queue
        browser.get(lot.url(f"/login?next=/routes/{route}/groups"))
        browser.find_element(By.NAME, "token").send_keys(TOKEN)
        follow(browser, browser.find_element(By.CSS_SELECTOR, "button[type=submit]"))
        assert browser.current_url.endswith(f"/routes/{route}/groups")
        group = browser.find_element(By.XPATH, "//tr[td[3][text()='ValueError']]")
        assert group.find_element(By.CSS_SELECTOR, "td.count").text == "2"
        group.find_element(By.NAME, "rate").send_keys("100")
        follow(browser, group.find_element(By.TAG_NAME, "button"))
        assert "replayed 2 of 2" in browser.find_element(By.ID, "result").text
        wait_for(lambda: lot.driver.work_depth(lot.route) == 2, 30, "2 messages in work")
        browser.get(lot.url(f"/routes/{route}/parked?error_type=ValueError"))
        assert browser.find_elements(By.CSS_SELECTOR, "#parked tr.msg") == []
        assert sorted(lot.driver.parked_ids(lot.route)) == ["a1", "a2", "a3", "old1"]
        work = lot.driver.work(lot.route)
        assert sorted(w.headers["id"] for w in work) == ["task-v1", "task-v2"]


class TestRabbitConsole(ConsoleInBrowser):
    kind = "rabbitmq"


class TestRedisConsole(ConsoleInBrowser):
    kind = "redis"
