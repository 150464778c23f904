"""The notification settings page (/settings/notifications/): the user's webhooks (add, delete, send a test ping),
their latest deliveries, and the job-ended e-mail switch. Every write goes through jobs.services.webhooks, as the
API's (jobs/api/webhooks.py) do.

A new webhook's secret is shown in the answer to the POST that made it, and never again: the page renders it
there instead of redirecting (a flash message would carry the secret through the session or a cookie).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from jobs.models import Webhook
from jobs.services import webhooks as service


class WebhookForm(forms.Form):
    url = forms.CharField(max_length=500, label="URL", help_text="http:// or https://, e.g. https://ci.example/hook")
    secret = forms.CharField(
        max_length=200,
        required=False,
        help_text=f"At least {service.SECRET_MIN_LENGTH} characters; leave it empty and one is generated.",
    )
    events = forms.MultipleChoiceField(
        choices=Webhook.Event.choices,
        initial=service.EVENTS,
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="None ticked: every event.",
    )


class EmailForm(forms.Form):
    email_on_job_end = forms.BooleanField(required=False, label="E-mail me when one of my jobs ends")


def _own(request: HttpRequest) -> Webhook:
    user: Any = request.user  # login_required: a User
    raw = request.POST.get("webhook", "").strip()
    hook = Webhook.objects.filter(pk=int(raw), owner=user).first() if raw.isdigit() else None
    if hook is None:
        raise Http404("no such webhook")
    return hook


@login_required
@require_http_methods(["GET", "POST"])
def notifications(request: HttpRequest) -> HttpResponse:
    user: Any = request.user  # login_required: a User
    form = WebhookForm()
    created = None
    prefs = service.notification_settings(user=user)
    email_form = EmailForm(initial={"email_on_job_end": prefs.email_on_job_end})
    action = request.POST.get("action", "")
    if request.method == "POST":
        if action == "add":
            form = WebhookForm(request.POST)
            if form.is_valid():
                try:
                    created = service.webhook_create(owner=user, **form.cleaned_data)
                    form = WebhookForm()
                except ValidationError as exc:
                    for field, errs in exc.message_dict.items():
                        form.add_error(field if field in form.fields else None, errs)
        elif action in ("delete", "ping"):
            hook = _own(request)
            if action == "delete":
                service.webhook_delete(webhook=hook)
                messages.success(request, f"Webhook {hook.url} deleted.")
            else:
                service.webhook_ping(webhook=hook)
                messages.success(request, f"Test ping queued for {hook.url}; its result shows below.")
            return redirect("notifications")
        elif action == "email":
            email_form = EmailForm(request.POST)
            if email_form.is_valid():
                try:
                    service.notification_settings_update(user=user, **email_form.cleaned_data)
                    messages.success(request, "E-mail setting saved.")
                    return redirect("notifications")
                except ValidationError as exc:
                    email_form.add_error(None, exc.messages)
        else:
            return HttpResponse("unknown action", status=400)
    status = 400 if (form.errors or email_form.errors) else 200
    ctx = {
        "form": form,
        "email_form": email_form,
        "created": created,
        "webhooks": Webhook.objects.filter(owner=user),
        "deliveries": service.deliveries_recent(user=user),
        "user_email": user.email,
        "retry_delays": settings.WEBHOOK_RETRY_DELAYS,
    }
    return render(request, "jobs/notifications.html", ctx, status=status)
