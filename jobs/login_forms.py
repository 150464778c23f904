"""The log-in forms (the site's and the admin's): the log-in throttle's message while a username or an address is
locked (jobs.api.login_guard). Kept apart from the new-job form (jobs.forms, which re-exports them)."""

from __future__ import annotations

from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from jobs.api import login_guard


class LockoutMixin:
    """The log-in throttle's message (jobs.api.login_guard) instead of "wrong password" while the
    username or the client's address is locked; the backend refuses such attempts either way."""

    throttled = False  # the view answers 429 when set

    def clean(self):
        wait = login_guard.lock_wait(self.data.get("username") or None, login_guard.client_address(self.request))
        if wait is not None:
            self.throttled = True
            raise ValidationError(login_guard.lock_message(wait), code="throttled")
        return super().clean()


class ThrottledAuthenticationForm(LockoutMixin, AuthenticationForm):
    """The log-in page's form (jobs.views.ThrottledLoginView)."""


class ThrottledAdminAuthenticationForm(LockoutMixin, AdminAuthenticationForm):
    """The admin's log-in form (set on admin.site in congweb.urls)."""
