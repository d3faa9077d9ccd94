"""The demo's quote page in a real Chromium: a view ``request()``s a price from the
``price_quote`` stream consumer in a real ``runconsumers``, and shows the reply, the refusal,
the timeout, or at once that no pricing service runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from demo_site.demo.views import QUOTE_TIMEOUT

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

#: The no-responders answer must come this fast (ms, in the view): the contract says
#: 50 ms; the margin is for a busy machine, still far below QUOTE_TIMEOUT.
NO_RESPONDERS_MS = 250


def ask_for_quote(page: Any, sku: str, quantity: int) -> tuple[Any, float]:
    """Open the quote page from the header, ask for ``quantity`` × ``sku``; return the
    result card and the seconds from the click to the answered page."""
    page.click("#nav-quote")
    page.wait_for_selector("#quote-form")
    page.fill("#id_sku", sku)
    page.fill("#id_quantity", str(quantity))
    started = time.monotonic()
    page.click("#quote-submit")
    result = page.wait_for_selector("#quote-result")
    return result, time.monotonic() - started


def elapsed_ms(result: Any) -> float:
    """Return how long the view waited for ``request()``, as the page reports it."""
    return float(result.get_attribute("data-elapsed-ms"))


def test_quote_shows_the_price_for_a_known_sku(
    logged_in_page, demo_users, pricing_consumer, artifacts_dir: Path
) -> None:
    """Tests that the page shows the price the price_quote consumer computed (12 × A1 at
    4.50 EUR, 10% off from 10 items), with the currency from the reply's headers."""
    page = logged_in_page("alice")
    result, _ = ask_for_quote(page, "A1", 12)
    assert result.get_attribute("data-outcome") == "price"
    assert page.inner_text("#quote-total") == "48.60 EUR"
    assert "12 × Espresso cup (A1)" in result.inner_text()
    assert "4.50 EUR" in result.inner_text()
    print(f"quote answered in {elapsed_ms(result):.1f} ms")
    page.screenshot(path=str(artifacts_dir / "quote-price.png"))


def test_quote_shows_the_refusal_for_an_unknown_sku(
    logged_in_page, demo_users, pricing_consumer, artifacts_dir: Path
) -> None:
    """Tests that a SKU the consumer rejects shows its message (as text, not markup) as
    soon as it refused, far from the timeout."""
    page = logged_in_page("alice")
    result, _ = ask_for_quote(page, "<b>Q7</b>", 1)
    assert result.get_attribute("data-outcome") == "refused"
    heading = result.query_selector("h2").inner_text()
    assert heading == "The pricing service refused: unknown product '<b>Q7</b>'"
    assert page.locator("#quote-result b").count() == 0
    assert elapsed_ms(result) < QUOTE_TIMEOUT * 1000 / 2
    page.screenshot(path=str(artifacts_dir / "quote-refused.png"))


def test_quote_without_a_pricing_service_says_so_at_once(
    logged_in_page, demo_users, artifacts_dir: Path
) -> None:
    """Tests that with no price_quote consumer running the page says so (NoResponders) in
    well under the request's timeout, instead of waiting it out."""
    page = logged_in_page("alice")
    result, seconds = ask_for_quote(page, "A1", 1)
    assert result.get_attribute("data-outcome") == "no-responders"
    assert "No pricing service is running right now" in result.inner_text()
    print(f"NoResponders after {elapsed_ms(result):.1f} ms in the view, {seconds:.2f} s in all")
    assert elapsed_ms(result) < NO_RESPONDERS_MS
    assert seconds < QUOTE_TIMEOUT / 2
    page.screenshot(path=str(artifacts_dir / "quote-no-service.png"))


def test_quote_from_a_slow_service_times_out(
    logged_in_page, demo_users, pricing_consumer, artifacts_dir: Path
) -> None:
    """Tests that a SKU slower to price than QUOTE_TIMEOUT shows the timeout text after
    the timeout (the only failure that waits)."""
    page = logged_in_page("alice")
    result, _ = ask_for_quote(page, "Z9", 1)
    assert result.get_attribute("data-outcome") == "timeout"
    assert f"did not answer within {QUOTE_TIMEOUT} s" in result.inner_text()
    assert elapsed_ms(result) >= QUOTE_TIMEOUT * 1000
    page.screenshot(path=str(artifacts_dir / "quote-timeout.png"))
