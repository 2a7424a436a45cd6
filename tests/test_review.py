"""The review page (issue 13), clicked through in a real headless Chromium (Debian's chromium and
chromium-driver, driven by selenium): change the kept image, mark a false match, save; then
apply honours the decisions and a later dedupe does not propose the rejected pair again.

Skips where chromium, chromedriver or selenium is missing; CI (.ci/run) installs all three.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from test_apply import cwd, deduped  # noqa: F401  (fixtures: a deduped library in a scratch folder)
from test_cli import calibrated_model, cli  # noqa: F401  (fixture)

from copyscan.groups_file import read_decisions, read_dedupe_output
from copyscan.same_files import path_to_b64
from copyscan.review import start


def _driver_paths() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
    return (browser, driver) if browser and driver else None


def test_server_refuses_foreign_requests(deduped):
    cwd, _ = deduped
    server = start(cwd / "dup")
    try:
        with urllib.request.urlopen(server.url) as res:
            page = res.read().decode()
        assert "Save decisions" in page and "reclaimable" in page
        bad = urllib.request.Request(server.url + "decisions", data=b'{"decisions": []}', method="POST",
                                     headers={"X-Copyscan-Token": "guess", "Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad)
        assert err.value.code == 403
        other_host = urllib.request.Request(server.url, headers={"Host": "evil.example:80"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(other_host)
        assert err.value.code == 403
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(server.url + "thumbs/../groups.json")
    finally:
        server.stop()


def test_clicking_through_the_review_in_chromium(deduped):
    if _driver_paths() is None:
        if os.environ.get("COPYSCAN_REQUIRE_BROWSER"):
            pytest.fail("COPYSCAN_REQUIRE_BROWSER is set but chromium / chromedriver are missing")
        pytest.skip("no chromium / chromedriver (apt-get install chromium chromium-driver)")
    if os.environ.get("COPYSCAN_REQUIRE_BROWSER"):
        import selenium.webdriver as webdriver
    else:
        webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    cwd, lib = deduped
    run = read_dedupe_output(cwd / "dup")
    g_half = next(g for g, rs in run.groups.items() if any(r.path == str(lib["half"]) for r in rs))
    g_q60 = next(g for g, rs in run.groups.items() if any(r.path == str(lib["q60"]) for r in rs))
    old_keep = next(r.path for r in run.groups[g_half] if r.role == "keep")

    browser, driver_path = _driver_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--user-data-dir={cwd / 'profile'}"):
        options.add_argument(arg)
    server = start(cwd / "dup")
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(server.url)

        def card(path: str):
            return driver.find_element(By.CSS_SELECTOR, f'.card[data-path="{path_to_b64(path)}"]')

        # change the kept image of one group: the old one turns into a copy by itself
        card(str(lib["half"])).find_element(By.CSS_SELECTOR, "input[value=keep]").click()
        assert card(old_keep).find_element(By.CSS_SELECTOR, "input[value=copy]").is_selected()
        assert "keep" in card(str(lib["half"])).get_attribute("class")
        # mark a false match in another
        card(str(lib["q60"])).find_element(By.CSS_SELECTOR, "input[value='not-a-copy']").click()
        driver.find_element(By.ID, "save").click()
        WebDriverWait(driver, 20).until(lambda d: "saved" in d.find_element(By.ID, "status").text)
        assert "saved 3 decisions" in driver.find_element(By.ID, "status").text
        # a reload shows the saved state
        driver.refresh()
        assert card(str(lib["half"])).find_element(By.CSS_SELECTOR, "input[value=keep]").is_selected()
    finally:
        driver.quit()
        server.stop()

    decisions = {(d.group_id, d.path): d.decision for d in read_decisions(cwd / "dup" / "decisions.csv", run)}
    assert decisions == {(g_half, str(lib["half"])): "keep", (g_half, old_keep): "copy", (g_q60, str(lib["q60"])): "not-a-copy"}

    cli("apply", "dup", "--move-to", "moved", "--yes")  # takes dup/decisions.csv by default
    assert lib["half"].exists() and not Path(old_keep).exists() and lib["q60"].exists()

    cli("undo", next((cwd / "dup").glob("journal-*.jsonl")))
    cli("dedupe", "./photos", "-j", "0", "-q", "-o", "dup2")
    doc = json.loads((cwd / "dup2" / "groups.json").read_text())
    for g in doc["groups"]:
        paths = {m["path"] for m in g["members"]}
        assert not {str(lib["q60"]), str(lib["p01"])} <= paths, "the rejected pair came back"
        if str(lib["half"]) in paths:  # the choice is remembered too
            assert g["keep"] == str(lib["half"]) and "earlier review" in g["keep_reason"]
