"""The console at `/`, as a person sees it in a real browser (Debian's headless chromium).

A two-instance cluster runs against a database seeded with a day of readings of
three devices, one of which went quiet for half an hour and came back (the gap the page
must draw) and one whose name is markup (the page must show it as text). The page is
opened on the standby, so it must name the other instance as the leader, and it must
follow a step-down by itself. A screenshot is kept: `console.png` in the test's
directory, and in `$AUPUS_ARTIFACTS` when that is set (docs/testing.md).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from aupus_ha.lab.democonsole import CHROMIUM_HEADLESS_FLAGS
from aupus_ha.lab.localcluster import (
    InstanceProcess,
    fetch,
    seed_equipment,
    wait_single_leader,
    wait_until,
)
from tests.acceptance.conftest import ClusterFactory
from tests.conftest import run_async
from tests.helpers import standby_ready

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (*CHROMIUM_HEADLESS_FLAGS, "--window-size=1280,1500")
TOKEN = "console-test-token-1234"
PAGE_WAIT_S = 15.0
MARKUP_NAME = '<img src=x onerror="document.title=1"> Medidor & "sala"'

# A day and an hour of one reading a minute (the last half-minute ago), created when they are
# timed; $2/$3 (or NULL) bound a hole. created_at = timestamp_dados, so the ingest-rate
# chart shows the last hour of them.
SEED_READINGS = """
INSERT INTO equipamentos_dados (equipamento_id, timestamp_dados, created_at, dados,
                                qualidade, energia_kwh, potencia_ativa_kw)
SELECT $1, t, t, '{"seed": true}', 'bom', 0.1, 6.0
FROM generate_series(now() - interval '25 hours', now() - interval '30 seconds',
                     interval '1 minute') AS t
WHERE $2::timestamptz IS NULL OR NOT (t > $2 AND t < $3)
"""


def _webdriver_or_skip() -> Any:
    """The selenium module, or a skip (a failure on CI) naming what is missing."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        from selenium import webdriver
    except ImportError:
        webdriver = None
        missing.append("the selenium package (pip install -e '.[test]')")
    if missing:
        reason = f"the browser test needs {', '.join(missing)} (Debian: chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return webdriver


@pytest.fixture
def browser() -> Iterator[Any]:
    webdriver = _webdriver_or_skip()
    profile = tempfile.mkdtemp(prefix="aupus-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options
    )
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


async def _seed(dsn: str) -> list[str]:
    """Three devices with a day of readings; the second silent from -2 h to -1.5 h."""
    ids = [eid for eid, _ in await seed_equipment(dsn, 3, prefix="con")]
    await fetch(dsn, "UPDATE equipamentos SET nome = $2 WHERE id = $1", ids[2], MARKUP_NAME)
    hole = await fetch(
        dsn, "SELECT now() - interval '2 hours' AS a, now() - interval '90 min' AS b"
    )
    for eid in ids:
        bounds = (hole[0]["a"], hole[0]["b"]) if eid == ids[1] else (None, None)
        await fetch(dsn, SEED_READINGS, eid, *bounds)
    return ids


async def _cluster(spawn: ClusterFactory) -> tuple[InstanceProcess, InstanceProcess]:
    leader = spawn("node-a", ADMIN_TOKEN=TOKEN)
    await wait_single_leader([leader])
    standby = spawn("node-b", ADMIN_TOKEN=TOKEN)
    await wait_until(lambda: standby_ready(standby), 20, f"node-b not ready: {standby.tail()}")
    return leader, standby


async def _ingest_rate(node: InstanceProcess, dsn: str) -> tuple[dict[str, Any], int]:
    """/health/ingest-rate, and the rows the database holds for the same 60 minutes."""
    status, body = await node.get("/health/ingest-rate", timeout=5)
    assert status == 200 and body is not None, body
    first = datetime.fromisoformat(body["points"][0]["minute"])  # the window it counted
    rows = await fetch(
        dsn, "SELECT count(*) AS n FROM equipamentos_dados WHERE created_at >= $1", first
    )
    return body, int(rows[0]["n"])


async def _step_down(node: InstanceProcess) -> None:
    url = f"http://127.0.0.1:{node.http_port}/admin/step-down"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as session, session.post(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()


def _keep_screenshot(driver: Any, where: Path, name: str) -> Path:
    shot = where / name
    driver.save_screenshot(str(shot))
    artifacts = os.environ.get("AUPUS_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / name)
    return shot


def test_console_shows_leader_devices_and_gaps_and_follows_a_handover(
    spawn: ClusterFactory, database_url: str, browser: Any, tmp_path: Path
) -> None:
    """Opened on the standby: the leader's name, a row per device (a name made of markup
    shown as text), a gap drawn in the bar of the device that went quiet and none in the
    others', the ingest chart; after a step-down the page names the new leader by itself."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    ids = run_async(lambda: _seed(database_url))
    leader, standby = run_async(lambda: _cluster(spawn))
    wait = WebDriverWait(browser, PAGE_WAIT_S)

    def text(element_id: str) -> str:
        return str(browser.find_element(By.ID, element_id).text)

    def row(eid: str) -> Any:
        return browser.find_element(By.CSS_SELECTOR, f'tr[data-equipamento="{eid}"]')

    def gaps_drawn(eid: str) -> int:
        return len(row(eid).find_elements(By.CSS_SELECTOR, "rect.lacuna"))

    browser.get(f"http://127.0.0.1:{standby.http_port}/?intervalo=1")
    wait.until(lambda _: text("lider-nome") == leader.name, f"leader: {text('lider-nome')!r}")
    assert text("instancia-nome") == standby.name
    wait.until(
        lambda _: len(browser.find_elements(By.CSS_SELECTOR, "tr[data-equipamento]")) == 3,
        "one row per device",
    )
    wait.until(lambda _: gaps_drawn(ids[1]) >= 1, "the quiet device's gap is drawn")
    assert gaps_drawn(ids[0]) == 0 and gaps_drawn(ids[2]) == 0
    name = row(ids[2]).find_element(By.CSS_SELECTOR, ".nome")
    assert name.text == MARKUP_NAME and not name.find_elements(By.TAG_NAME, "img")
    assert browser.title != "1"  # the onerror of the name never ran
    bars = browser.find_elements(By.CSS_SELECTOR, "#ingestao-grafico rect.barra-ingestao")
    assert len(bars) == 60, "one bar per minute of the last hour"
    rate, stored = run_async(lambda: _ingest_rate(standby, database_url))
    assert rate["total"] == stored and len(rate["points"]) == 60, (rate, stored)
    assert f"{stored} linhas na última hora" in text("ingestao-resumo").replace(".", "")
    rows = [
        r.find_element(By.CSS_SELECTOR, "td").text
        for r in browser.find_elements(By.CSS_SELECTOR, "#instancias-linhas tr")
    ]
    assert {leader.name, standby.name} <= set(rows), rows
    _keep_screenshot(browser, tmp_path, "console.png")

    run_async(lambda: _step_down(leader))
    wait.until(lambda _: text("lider-nome") == standby.name, "the page follows the handover")
    wait.until(
        lambda _: f"→ {standby.name} (entregue pelo líder" in text("trocas-lista"),
        f"the handover is listed: {text('trocas-lista')!r}",
    )
    _keep_screenshot(browser, tmp_path, "console-after-step-down.png")


@pytest.mark.parametrize("ci", [None, "true"])
def test_a_missing_browser_skips_locally_and_fails_on_ci(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ci: str | None
) -> None:
    """Without chromium the browser test is skipped with the reason, except on CI (CI
    set), where a console nobody looked at must not pass as tested."""
    monkeypatch.setattr(f"{__name__}.CHROMEDRIVER", tmp_path / "no-chromedriver")
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(outcome, match="no-chromedriver"):
        _webdriver_or_skip()
