"""The customer page ships inside the package, carries no inline code its policy would
refuse, and its framing policy takes only well-formed sources."""

from __future__ import annotations

import re
from importlib import resources

import pytest
from pydantic import ValidationError

from billing_worker.api.routes_portal import (
    STATIC,
    PortalSettings,
    load_portal_settings,
    page_policy,
    portal_file,
)
from billing_worker.config import ConfigError


class TestShippedFiles:
    """The page's files as the installed package holds them."""

    def test_the_files_are_package_data(self) -> None:
        """index.html and every file it loads read through importlib.resources."""
        folder = resources.files("billing_worker.api") / "portal"
        for name in ("index.html", *STATIC):
            assert (folder / name).is_file(), name
            assert portal_file(name) == (folder / name).read_bytes()
        page = portal_file("index.html").decode()
        for name in STATIC:
            assert f'"portal/{name}"' in page, name

    def test_no_inline_code_or_styles(self) -> None:
        """No inline script, style element, style attribute or on* handler in the page
        (the policy allows files from this origin only)."""
        page = portal_file("index.html").decode()
        assert re.findall(r"<script(?![^>]*\ssrc=)", page) == []
        assert "<style" not in page
        assert re.search(r"\sstyle=", page) is None
        assert re.search(r"\son[a-z]+=", page) is None
        script = portal_file("portal.js").decode()
        assert "innerHTML" not in script
        assert "eval(" not in script


class TestFramePolicy:
    """``BILLING_PORTAL_FRAME_ANCESTORS``: who may show the page in a frame."""

    def test_nobody_by_default(self) -> None:
        """Unset, the page refuses every frame."""
        csp = page_policy(PortalSettings())["Content-Security-Policy"]
        assert csp.endswith("frame-ancestors 'none'")

    def test_named_origins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Origins from the environment become the directive's sources, in order."""
        monkeypatch.setenv(
            "BILLING_PORTAL_FRAME_ANCESTORS", " https://app.example.com  https://*.example.org "
        )
        csp = page_policy(PortalSettings())["Content-Security-Policy"]
        assert "frame-ancestors https://app.example.com https://*.example.org" in csp

    @pytest.mark.parametrize(
        "value",
        ["https://a.example; script-src *", "*", "javascript:alert(1)", "'none' 'self'",
         "https://a.example,https://b.example"],
    )  # fmt: skip
    def test_refuses_what_is_not_a_source(self, value: str) -> None:
        """Anything that could end the directive, or is no origin, is refused at start."""
        with pytest.raises(ValidationError):
            PortalSettings(frame_ancestors=value)

    def test_a_wrong_value_stops_the_api_at_start(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Loading the page settings (as the app does when it is made) names the variable
        and the offending source."""
        monkeypatch.setenv("BILLING_PORTAL_FRAME_ANCESTORS", "https://ok.example evil;")
        with pytest.raises(ConfigError, match=r"BILLING_PORTAL_FRAME_ANCESTORS: .*'evil;'"):
            load_portal_settings()
