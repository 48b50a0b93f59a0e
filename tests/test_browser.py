"""The user's journey in a real headless Chromium (Debian's package, driven by Selenium): start
`crawl2llm server`, open the UI, run the pipeline deployment from its custom-run form on a small real
WARC, wait for it, then open each stage's summary table and the training loss curve, which must be
an image the browser decoded. Screenshots go to the test's tmp folder, and to $CRAWL2LLM_SCREENSHOTS
(e.g. artifacts/browser) when set.

Without chromium/chromedriver/selenium the test skips (`make setup` installs them where it may run
apt); under CRAWL2LLM_REQUIRE_DATA=1 (CI) it fails instead.
"""

from __future__ import annotations

import re
import time
import warnings

import pytest

from tests.fixtures.browser import chromium
from tests.fixtures.server_cmd import api_client, crawl2llm_server, wait_final

pytestmark = pytest.mark.slow

WARC = "warc/dolma-sample-0000.warc.gz"
STAGES = ["ingest", "dedup", "quality", "pii", "tokenize", "train", "evaluate"]
# (form section, field label, value): a tiny tokenizer, GPT and evaluation, seconds on a CPU
TINY = [  # (the labels from the config's section down to the field, value)
    (["Tokenize", "Vocab Size"], 512),
    (["Train", "Schedule", "Max Steps"], 30),
    (["Train", "Data", "Batch Size"], 4),
    (["Train", "Model", "Block Size"], 32),
    (["Train", "Model", "N Layer"], 2),
    (["Train", "Model", "N Head"], 2),
    (["Train", "Model", "N Embd"], 32),
    (["Train", "Schedule", "Warmup Steps"], 5),
    (["Train", "Validation", "Interval"], 10),
    (["Train", "Validation", "Batches"], 2),
    (["Train", "Checkpoints", "Interval"], 10),
    (["Evaluate", "Max New Tokens"], 8),
    (["Evaluate", "Val Batches"], 2),
]


def _property(scope, label: str):
    """A schema-form property by its label (optional ones read 'Label (Optional)')."""
    from selenium.webdriver.common.by import By

    return scope.find_element(
        By.XPATH,
        (
            ".//div[contains(concat(' ', normalize-space(@class), ' '), ' schema-form-property ')]"
            "[./div[contains(@class, 'p-label__header')]//span[contains(@class, 'schema-form-property__label')]"
            f"[normalize-space()='{label}' or normalize-space()='{label} (Optional)']]"
        ),
    )


def _fill(driver, path: list[str], value) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    scope = driver
    for label in path:
        scope = _property(scope, label)
    boxes = scope.find_elements(By.XPATH, "./div[contains(@class, 'p-label__body')]//*[self::input or self::textarea]")
    if not boxes:  # an empty list: its first item, as a user adds it
        add = scope.find_element(By.XPATH, ".//button[normalize-space()='Add item']")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", add)
        add.click()
        from selenium.webdriver.support.ui import WebDriverWait

        boxes = WebDriverWait(driver, 30).until(
            lambda d: scope.find_elements(
                By.XPATH, "./div[contains(@class, 'p-label__body')]//*[self::input or self::textarea]"
            )
        )
    box = boxes[0]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)
    for _ in range(3):  # a select-all that lands before the box is ready would append: check what it holds
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(str(value))
        if box.get_attribute("value") == str(value):
            return
    pytest.fail(f"form field {' / '.join(path)} holds {box.get_attribute('value')!r}, not {str(value)!r}")


def _click(driver, by, selector: str, timeout_s: float = 30) -> None:
    """Click the first match once it exists; the UI may re-render it in between, so retry."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    def click(d):
        found = d.find_elements(by, selector)
        try:
            return bool(found) and (found[0].click() or True)
        except StaleElementReferenceException:
            return False

    WebDriverWait(driver, timeout_s).until(click)


def _click_text(driver, text: str, tag: str = "*") -> None:
    from selenium.webdriver.common.by import By

    _click(driver, By.XPATH, f"//{tag}[normalize-space()='{text}']")


def _login_link(log_path) -> str:
    for line in log_path.read_text().splitlines():
        if line.startswith("sign in to the UI: "):
            return line.split()[5]
    raise AssertionError(f"crawl2llm server printed no login link:\n{log_path.read_text()[-2000:]}")


def test_pipeline_from_the_ui_form_to_artifacts(tmp_path, shared_data, screenshots):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    warc = shared_data(WARC)
    driver = chromium()
    t0 = time.monotonic()
    try:
        allow = ("--allow", str(tmp_path), "--allow", str(warc.parent))
        with crawl2llm_server(tmp_path / "prefect", args=allow) as (ui, api, log_path):
            wait = WebDriverWait(driver, 60)
            driver.get(f"{ui}/deployments")  # not signed in: the UI asks for the password first
            wait.until(lambda d: "/login" in d.current_url and d.find_elements(By.CSS_SELECTOR, "input"))
            driver.save_screenshot(str(screenshots / "00-sign-in-asked.png"))
            driver.get(_login_link(log_path))  # what the command printed: signs this browser in
            wait.until(lambda d: not d.current_url.split("#")[0].endswith("/crawl2llm-login"))
            driver.get(f"{ui}/deployments")
            _click(driver, By.LINK_TEXT, "pipeline")
            _click_text(driver, "Run", "button")
            _click_text(driver, "Custom run")
            wait.until(lambda d: d.current_url.split("?")[0].endswith("/run"))
            wait.until(lambda d: d.find_elements(By.XPATH, "//span[normalize-space()='Store (Optional)']"))
            _fill(driver, ["config", "Store"], tmp_path / "store")
            _click_text(driver, "Submit", "button")  # nothing to read yet: the form refuses, naming the field
            wait.until(
                lambda d: any(
                    "'inputs' is a required property" in m
                    for m in _shown(d, ".p-toast__card, .p-label__message--failed")
                )
            )
            driver.save_screenshot(str(screenshots / "01-empty-inputs-refused.png"))
            assert not _flow_runs(api), "the form made a run with no inputs"
            _fill(driver, ["config", "Inputs"], warc)
            for labels, value in TINY:
                _fill(driver, ["config", *labels], value)
            driver.execute_script("arguments[0].scrollIntoView()", _property(driver, "Store"))  # the filled top
            driver.save_screenshot(str(screenshots / "02-custom-run-form.png"))
            t_submit = time.monotonic()
            run_id = _submit(driver, api, log_path)
            timings = {"form filled": t_submit - t0, "run made": time.monotonic() - t_submit}
            try:  # back on the deployment's page, which lists the new run: open it
                wait.until(lambda d: not d.current_url.split("?")[0].endswith("/run"))
                _click(driver, By.CSS_SELECTOR, f"a[href*='/runs/flow-run/{run_id}']")
            except TimeoutException:
                warnings.warn(
                    f"the UI made run {run_id} but was still on the form 60 s later: {driver.current_url}", stacklevel=1
                )
                driver.get(f"{ui}/runs/flow-run/{run_id}")
            wait.until(lambda d: f"/runs/flow-run/{run_id}" in d.current_url)

            with api_client(api) as client:
                t_run = time.monotonic()
                run = wait_final(client, run_id, timeout_s=240)
                timings["run final"] = time.monotonic() - t_run
            assert run.parameters["config"]["train"]["schedule"]["max_steps"] == 30  # what the form said
            assert run.parameters["config"]["inputs"] == [str(warc)]
            assert run.state.is_completed(), f"{run.state.name}: {run.state.message}"
            driver.refresh()
            wait.until(lambda d: d.find_elements(By.XPATH, "//*[normalize-space()='Completed']"))
            driver.save_screenshot(str(screenshots / "03-flow-run-completed.png"))

            made = _run_artifacts(api, run_id)  # the pipeline run's and its stage subflows'
            shot = iter(range(4, 100))
            for stage in STAGES:  # each stage's summary table, as the UI renders it
                [summary] = [a for a in made if a["key"] and a["key"].startswith(f"{stage}-summary-")]
                driver.get(f"{ui}/artifacts/artifact/{summary['id']}")
                wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "table tr")) >= 3)
                page = driver.find_element(By.TAG_NAME, "body").text
                assert "metric" in page and "[object Object]" not in page, stage
                names = [r.text.split("\n")[0] for r in driver.find_elements(By.CSS_SELECTOR, "table tr")[1:]]
                reasons = [i for i, name in enumerate(names) if name.startswith("removed.")]
                assert reasons == list(range(len(reasons))), names  # why documents went: the first rows
                assert reasons or stage != "ingest", names  # ingest drops 2 of this WARC's 22 documents
                driver.save_screenshot(str(screenshots / f"{next(shot):02d}-{stage}-summary.png"))

            [report] = [a for a in made if (a["key"] or "").startswith("ingest-report-")]
            driver.get(f"{ui}/artifacts/artifact/{report['id']}")  # why documents went, and where to see them
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".markdown-renderer table"))
            shown = "\n".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, ".markdown-renderer"))
            assert "removed because" in shown and "ingest-removed-" in shown, shown[:1500]
            driver.save_screenshot(str(screenshots / f"{next(shot):02d}-ingest-report.png"))
            [examples] = [a for a in made if (a["key"] or "").startswith("ingest-removed-")]
            driver.get(f"{ui}/artifacts/artifact/{examples['id']}")  # the documents, as plain text
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "table tr")) >= 2)
            cells = driver.find_element(By.TAG_NAME, "table").text
            assert "reason" in cells and "text" in cells and "language" in cells, cells[:1000]
            driver.save_screenshot(str(screenshots / f"{next(shot):02d}-ingest-removed.png"))

            links = [a for a in made if re.match(r"[a-z-]+-(output|model|checkpoint)-[0-9a-f]{16}$", a["key"] or "")]
            assert len(links) >= 7, [a["key"] for a in links]  # every stage's output, the model, the checkpoint
            for a in links:  # each link opens its output in the store browser: no 404
                driver.get(f"{ui}/artifacts/artifact/{a['id']}")
                wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "a[href*='/crawl2llm-store/']"))
                href = driver.find_element(By.CSS_SELECTOR, "a[href*='/crawl2llm-store/']").get_attribute("href")
                if a["key"].startswith(("train-model-", "train-checkpoint-")):  # a file: the browser downloads it
                    status = driver.execute_async_script(
                        "fetch(arguments[0], {method: 'HEAD'}).then(r => arguments[1]([r.status, "
                        "r.headers.get('content-disposition')]))",
                        href,
                    )
                    assert status[0] == 200 and "attachment" in status[1], (a["key"], status)
                    continue
                ui_tab = driver.current_window_handle
                _click(driver, By.CSS_SELECTOR, "a[href*='/crawl2llm-store/']")
                wait.until(lambda d: len(d.window_handles) > 1 or "/crawl2llm-store/" in d.current_url)
                if len(driver.window_handles) > 1:  # the UI opens it in a new tab
                    driver.switch_to.window([h for h in driver.window_handles if h != ui_tab][0])
                wait.until(
                    lambda d: (
                        "/crawl2llm-store/" in d.current_url
                        and d.execute_script("return document.readyState") == "complete"
                    )
                )
                body = driver.find_element(By.TAG_NAME, "body").text
                assert "manifest.json" in body and "not found" not in body, (a["key"], body[:300])
                driver.save_screenshot(str(screenshots / f"{next(shot):02d}-{a['key'].rsplit('-', 1)[0]}.png"))
                if driver.current_window_handle != ui_tab:
                    driver.close()
                    driver.switch_to.window(ui_tab)

            # the run's own page: its summary card leads to this run's data
            driver.get(f"{ui}/runs/flow-run/{run_id}")
            wait.until(
                lambda d: d.execute_script(  # the tab: the innermost element that says Artifacts
                    "const t = [...document.querySelectorAll('button, a, [role=tab], li, span, div')]"
                    ".filter(e => e.textContent.trim() === 'Artifacts' && !e.querySelector('*:not(svg):not(path)')"
                    " || e.textContent.trim() === 'Artifacts' && e.children.length === 0);"
                    "if (t.length) { t[t.length - 1].click(); return true; } return false;"
                )
            )
            wait.until(lambda d: d.find_elements(By.XPATH, "//*[contains(text(), 'pipeline-summary-')]"))
            driver.save_screenshot(str(screenshots / f"{next(shot):02d}-run-artifacts-tab.png"))
            _click(driver, By.XPATH, "(//*[contains(text(), 'pipeline-summary-')])[last()]")
            wait.until(lambda d: "/artifacts/" in d.current_url)
            if "/artifacts/key/" in driver.current_url:  # the key's page: its newest version
                _click(driver, By.CSS_SELECTOR, "a[href*='/artifacts/artifact/']")
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".markdown-renderer table"))
            page = driver.find_element(By.TAG_NAME, "body").text
            evaluate_fp = [a for a in made if a["key"] and a["key"].startswith("evaluate-summary-")][0]["key"][-16:]
            assert "7 stage(s)" in page and f"evaluate/{evaluate_fp}" in page, page[:2000]  # this run's outputs
            assert all(f"| {stage} |" in page or stage in page for stage in STAGES)
            driver.save_screenshot(str(screenshots / f"{next(shot):02d}-pipeline-summary.png"))

            [curve] = [a for a in made if a["key"] and a["key"].startswith("train-loss-curve-")]
            driver.get(f"{ui}/artifacts/artifact/{curve['id']}")
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".markdown-renderer img"))
            img = driver.find_element(By.CSS_SELECTOR, ".markdown-renderer img")
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", img)
            wait.until(lambda d: d.execute_script("return arguments[0].complete", img))
            width = driver.execute_script("return arguments[0].naturalWidth", img)
            assert width > 0 and img.is_displayed(), "the loss curve is not an image the browser shows"
            # 30 steps logged every 10 (log_interval's default), evaluated every 10: every point plotted
            assert "3 train and 3 validation points" in driver.find_element(By.TAG_NAME, "body").text
            driver.save_screenshot(str(screenshots / f"{next(shot):02d}-train-loss-curve.png"))

            scrubbed = [a for a in made if (a["key"] or "").startswith("pii-scrubbed-")]
            for a in scrubbed:  # replaced spans in context, when this WARC had any
                driver.get(f"{ui}/artifacts/artifact/{a['id']}")
                wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "table tr")) >= 2)
                assert "context" in driver.find_element(By.TAG_NAME, "table").text
                driver.save_screenshot(str(screenshots / f"{next(shot):02d}-pii-scrubbed.png"))

            driver.get(f"{ui}/deployments")  # the nightly schedule, as the sidebar says it
            _click(driver, By.LINK_TEXT, "pipeline-nightly")
            wait.until(lambda d: d.find_elements(By.XPATH, "//*[normalize-space()='At 03:00 AM every day']"))
            driver.save_screenshot(str(screenshots / f"{next(shot):02d}-nightly-schedule.png"))
    except Exception:
        driver.save_screenshot(str(screenshots / "failure.png"))  # what the browser showed when it went wrong
        raise
    finally:
        driver.quit()
    steps = ", ".join(f"{step} {secs:.0f} s" for step, secs in timings.items())
    print(f"browser journey {time.monotonic() - t0:.0f} s ({steps}); screenshots in {screenshots}")


def _flow_runs(api: str) -> list[dict]:
    with api_client(api) as client:  # 3.8.8's client sends null filters the server rejects: post our own
        return client._client.post("/flow_runs/filter", json={"sort": "EXPECTED_START_TIME_DESC"}).json()


def _submit(driver, api: str, server_log, timeout_s: float = 90) -> str:
    """Submit the custom-run form; the id of the run it made. The UI goes back to the deployment's page
    once the server made the run. When it does not, what the page and the server said makes the error:
    field errors, toasts (seen while waiting: they fade), the browser console, the server logs. No run
    and no field error (the server refused, or nothing happened) gets one more click, as a user would
    give it, and a warning. (The refusal CI met, a 503 "database is locked", is fixed in
    flows/prefect_server.py and tested in tests/test_server.py.)"""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    seen: dict[str, list[str]] = {"toasts": [], "console": []}

    def left_form(d):
        for toast in _shown(d, ".p-toast__card"):
            if toast not in seen["toasts"]:
                seen["toasts"].append(toast)
        seen["console"] += [f"{e['level']}: {e['message']}"[:400] for e in d.get_log("browser")]
        return not d.current_url.split("?")[0].endswith("/run") or bool(_flow_runs(api))

    for attempt in (1, 2):
        _click_text(driver, "Submit", "button")
        try:
            WebDriverWait(driver, timeout_s, poll_frequency=1).until(left_form)
            break
        except TimeoutException:
            problems = {"field errors": _shown(driver, ".p-label__message--failed"), **seen}
            if attempt == 2 or problems["field errors"]:
                logs = "".join(
                    f"\n{log.name}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                    for log in (server_log, server_log.parent / "server.log")
                    if log.exists()
                )
                pytest.fail(f"the form did not submit in {timeout_s:.0f} s: {problems}{logs}")
            warnings.warn(
                f"the custom-run form made no run {timeout_s:.0f} s after a click on Submit, clicking again: {problems}",
                stacklevel=2,  # at the test's call of _submit
            )
    runs = _flow_runs(api)
    assert len(runs) == 1, f"Submit made {len(runs)} runs"
    return runs[0]["id"]


def _shown(driver, css: str) -> list[str]:
    """The text of the visible elements that match."""
    from selenium.webdriver.common.by import By

    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, css) if e.is_displayed() and e.text.strip()]


def _run_artifacts(api: str, run_id: str) -> list[dict]:
    """Every artifact of the run and of its subflow runs (one per stage)."""
    with api_client(api) as client:
        children = client._client.post(
            "/flow_runs/filter",
            json={
                "flow_runs": {"parent_flow_run_id": {"any_": [run_id]}},
                "limit": 200,
                "sort": "EXPECTED_START_TIME_ASC",
            },
        ).json()
        ids = [run_id, *(c["id"] for c in children)]
        return client._client.post(
            "/artifacts/filter", json={"flow_runs": {"id": {"any_": ids}}, "limit": 200, "sort": "CREATED_DESC"}
        ).json()
