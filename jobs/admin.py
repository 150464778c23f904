"""Django admin: the list and review of generated pairs, and read-mostly views of everything else.

Each pair links to its job's review desk (/jobs/<id>/review/, jobs/review_views.py), which reviews one pair
at a time by keyboard. Every review (bulk approve/reject, the change form's buttons, editing the chosen
text) goes through jobs.services.pair_review, which records the reviewer and the time. Models and datasets
are registered through the API/services (path and file checks), so the admin does not add them.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html
from django.utils.text import Truncator

from jobs import services
from jobs.models import (
    Artifact,
    Dataset,
    Experiment,
    GeneratedPair,
    Job,
    JobEvent,
    JobShard,
    ModelEntry,
    Webhook,
    WebhookDelivery,
)

LIST_CHARS = 160  # how much of each text the pair list shows
# Reviewing is reading side-by-side columns: give the page's width to them, not to the app sidebar.
admin.site.enable_nav_sidebar = False
admin.site.site_header = "congweb administration"
admin.site.site_title = "congweb admin"


def _cell(text: str | None, chars: int = LIST_CHARS):
    if text is None or text == "":
        return format_html('<span class="pair-empty">-</span>')
    return format_html('<div class="pair-cell" title="{}">{}</div>', text[:2000], Truncator(text).chars(chars))


# --- reward range filters ------------------------------------------------------------------------------
class RewardRangeFilter(admin.SimpleListFilter):
    """Filter a float field by range. Choices are the quartiles of the stored values (so they fit any
    reward scale); the URL value is ``lo:hi`` (lo <= x < hi, either end may be empty), so any range can
    also be typed into the address bar, and ``none`` selects rows without a value."""

    field_name = ""

    def _quartiles(self, qs: QuerySet) -> list[float]:
        vals = qs.exclude(**{f"{self.field_name}__isnull": True}).order_by(self.field_name)
        n = vals.count()
        if n == 0:
            return []
        edges = []
        for q in (0.25, 0.5, 0.75):
            v = vals.values_list(self.field_name, flat=True)[int(q * (n - 1))]
            edges.append(float(f"{float(v):.3g}"))  # 3 significant digits: readable on any scale
        return sorted(set(edges))

    def lookups(self, request, model_admin):
        edges = self._quartiles(model_admin.get_queryset(request))
        out = []
        if edges:
            out.append((f":{edges[0]:g}", f"< {edges[0]:g}"))
            out += [(f"{a:g}:{b:g}", f"{a:g} to {b:g}") for a, b in zip(edges, edges[1:])]
            out.append((f"{edges[-1]:g}:", f">= {edges[-1]:g}"))
        out.append(("none", "no value"))
        return out

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        if value == "none":
            return queryset.filter(**{f"{self.field_name}__isnull": True})
        lo, _, hi = value.partition(":")
        try:
            if lo.strip():
                queryset = queryset.filter(**{f"{self.field_name}__gte": float(lo)})
            if hi.strip():
                queryset = queryset.filter(**{f"{self.field_name}__lt": float(hi)})
        except ValueError:
            messages.error(request, f"{self.title}: give a range as lo:hi, e.g. 0:1.5 (got {value!r})")
            return queryset.none()
        return queryset


class ImplicitRewardFilter(RewardRangeFilter):
    title = "implicit reward (sum over tokens)"
    parameter_name = "implicit"
    field_name = "implicit_reward_sum"


class ImplicitRewardMeanFilter(RewardRangeFilter):
    title = "implicit reward per token"
    parameter_name = "implicit_mean"
    field_name = "implicit_reward_mean"


class GoldRewardFilter(RewardRangeFilter):
    title = "gold reward"
    parameter_name = "gold"
    field_name = "gold_reward"


# --- generated pairs ------------------------------------------------------------------------------------
@admin.register(GeneratedPair)
class GeneratedPairAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "job_link",
        "prompt_col",
        "chosen_col",
        "plain_col",
        "rejected_col",
        "implicit_col",
        "implicit_mean_col",
        "gold_col",
        "review_col",
        "shard",
        "worker",
    )
    list_display_links = ("id",)
    list_filter = (
        "job",
        "review_status",
        "empty_response",
        "shard",
        "worker",
        ImplicitRewardFilter,
        ImplicitRewardMeanFilter,
        GoldRewardFilter,
    )
    search_fields = ("prompt", "chosen")
    list_select_related = ("job", "reviewer")
    list_per_page = 50
    actions = ("approve_pairs", "reject_pairs", "train_on_reviewed")
    readonly_fields = (
        "job",
        "prompt_index",
        "alpha",
        "implicit_reward_sum",
        "implicit_reward_mean",
        "n_tokens",
        "empty_response",
        "gold_reward",
        "review_status",
        "reviewer",
        "reviewed_at",
        "shard",
        "worker",
    )
    fieldsets = (
        (
            "Review",
            {
                "fields": ("edited_text",),
                "description": "Saving a changed text marks the pair as edited; exports then use it as chosen.",
            },
        ),
        (
            "Scores and status",
            {
                "fields": (
                    ("implicit_reward_sum", "implicit_reward_mean", "n_tokens"),
                    ("gold_reward", "alpha", "empty_response"),
                    ("review_status", "reviewer", "reviewed_at"),
                    ("job", "prompt_index"),
                    ("shard", "worker"),
                )
            },
        ),
    )
    change_form_template = "admin/jobs/generatedpair/change_form.html"

    class Media:
        css = {"all": ("jobs/admin.css",)}

    def has_add_permission(self, request):
        return False  # pairs come from jobs

    @admin.display(description="job", ordering="job")
    def job_link(self, obj):
        # The job's review desk (jobs/review_views.py): the same review, one pair at a time, by keyboard.
        return format_html(
            '<a href="{}">{}</a><span class="pair-note"><a href="{}?pair={}">review desk</a></span>',
            reverse("job_detail", args=[obj.job_id]),
            obj.job_id,
            reverse("review_desk", args=[obj.job_id]),
            obj.pk,
        )

    @admin.display(description="prompt")
    def prompt_col(self, obj):
        return _cell(obj.prompt)

    @admin.display(description="chosen (CD)")
    def chosen_col(self, obj):
        if obj.review_status == GeneratedPair.Review.EDITED and obj.edited_text:
            return format_html('{}<span class="pair-note">edited</span>', _cell(obj.edited_text))
        if obj.empty_response:  # left out of the export unless asked for: say why at a glance
            return format_html('{}<span class="pair-note">empty response</span>', _cell(obj.chosen))
        return _cell(obj.chosen)

    @admin.display(description="plain pi_post")
    def plain_col(self, obj):
        return _cell(obj.plain)

    @admin.display(description="rejected")
    def rejected_col(self, obj):
        return _cell(obj.rejected)

    @admin.display(description="implicit (sum)", ordering="implicit_reward_sum")
    def implicit_col(self, obj):
        return "-" if obj.implicit_reward_sum is None else f"{obj.implicit_reward_sum:.3f}"

    @admin.display(description="per token", ordering="implicit_reward_mean")
    def implicit_mean_col(self, obj):
        return "-" if obj.implicit_reward_mean is None else f"{obj.implicit_reward_mean:.3f}"

    @admin.display(description="gold", ordering="gold_reward")
    def gold_col(self, obj):
        return "-" if obj.gold_reward is None else f"{obj.gold_reward:.3f}"

    @admin.display(description="review", ordering="review_status")
    def review_col(self, obj):
        who = f" by {obj.reviewer.get_username()}" if obj.reviewer_id else ""
        return format_html(
            '<span class="pair-status {}">{}</span><span class="pair-note">{}</span>',
            obj.review_status,
            obj.review_status,
            who,
        )

    def _review(self, request, queryset, action: str) -> None:
        n = 0
        for pair in queryset:
            services.pair_review(pair=pair, user=request.user, action=action)
            n += 1
        self.message_user(request, f"{n} pair(s) {action}d.", messages.SUCCESS)

    @admin.action(description="Approve selected pairs")
    def approve_pairs(self, request, queryset):
        self._review(request, queryset, "approve")

    @admin.action(description="Reject selected pairs")
    def reject_pairs(self, request, queryset):
        self._review(request, queryset, "reject")

    @admin.action(description="Train on the reviewed pairs of the selected pairs' jobs")
    def train_on_reviewed(self, request, queryset):
        # The new-job page, filled in as a train job whose pairs_from names those jobs (jobs.services.review_loop):
        # it trains on their pairs as reviewed, all of each job's, not only the pairs ticked here.
        ids = sorted(set(queryset.values_list("job_id", flat=True)))
        return HttpResponseRedirect(f"{reverse('job_new')}?pairs_from={','.join(map(str, ids))}")

    def save_model(self, request, obj, form, change):
        """The form only edits the text; approve/reject buttons and edits go through the service."""
        try:
            if "_approve" in request.POST:
                services.pair_review(pair=obj, user=request.user, action="approve")
            elif "_reject" in request.POST:
                services.pair_review(pair=obj, user=request.user, action="reject")
            elif "edited_text" in form.changed_data and (obj.edited_text or "").strip():
                services.pair_review(pair=obj, user=request.user, action="edit", edited_text=obj.edited_text)
            elif "edited_text" in form.changed_data:  # cleared: keep the text, leave the review as it was
                obj.save(update_fields=["edited_text"])
        except ValidationError as exc:
            self.message_user(request, "; ".join(exc.messages), messages.ERROR)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        extra_context = dict(extra_context or {})
        if object_id:
            extra_context["pair"] = self.get_object(request, object_id)
        return super().changeform_view(request, object_id, form_url, extra_context)


# --- jobs and the rest (read-mostly) ----------------------------------------------------------------------
class ArtifactInline(admin.TabularInline):
    model = Artifact
    extra = 0
    can_delete = False
    fields = readonly_fields = ("stage", "kind", "path", "partial", "created")

    def has_add_permission(self, request, obj=None):
        return False


class JobShardInline(admin.TabularInline):
    """The parts of the job's sharded generation stages: who ran each, how often, how far."""

    model = JobShard
    extra = 0
    can_delete = False
    fields = readonly_fields = ("stage", "index", "count", "status", "worker", "attempts", "done", "total", "error")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "owner",
        "kind",
        "status",
        "stage",
        "progress_pct",
        "attempts",
        "created",
        "finished",
        "links",
    )
    list_filter = ("status", "kind")
    search_fields = ("owner__username", "error")
    list_select_related = ("owner",)
    actions = ("cancel_jobs",)
    inlines = (ArtifactInline, JobShardInline)
    readonly_fields = (
        "owner",
        "kind",
        "config",
        "status",
        "stage",
        "progress",
        "attempts",
        "max_attempts",
        "error",
        "heartbeat_at",
        "task_id",
        "worker",
        "cancel_requested",
        "created",
        "started",
        "finished",
        "results",
        "partial",
        "links",
    )

    def has_add_permission(self, request):
        return False  # jobs are created through the pages/API (jobs.services.job_create)

    @admin.display(description="progress")
    def progress_pct(self, obj):
        return f"{obj.progress * 100:.0f}%"

    @admin.display(description="links")
    def links(self, obj):
        events = reverse("admin:jobs_jobevent_changelist") + f"?job__id__exact={obj.pk}"
        pairs = reverse("admin:jobs_generatedpair_changelist") + f"?job__id__exact={obj.pk}"
        return format_html(
            '<a href="{}">page</a> · <a href="{}">events</a> · <a href="{}">pairs</a>',
            reverse("job_detail", args=[obj.pk]),
            events,
            pairs,
        )

    @admin.action(description="Cancel selected jobs")
    def cancel_jobs(self, request, queryset):
        for job in queryset:
            try:
                services.job_cancel(job=job, user=request.user)
            except ValidationError as exc:
                self.message_user(request, f"job {job.pk}: {'; '.join(exc.messages)}", messages.WARNING)


@admin.register(JobEvent)
class JobEventAdmin(admin.ModelAdmin):
    list_display = ("job", "seq", "type", "created", "short")
    list_filter = ("type",)
    list_select_related = ("job",)
    readonly_fields = ("job", "seq", "type", "data", "created")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="data")
    def short(self, obj):
        return Truncator(str(obj.data)).chars(160)


@admin.register(ModelEntry)
class ModelEntryAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "family", "owner", "path", "vocab_fingerprint", "created")
    list_filter = ("kind", "family")
    search_fields = ("name", "path")
    readonly_fields = ("path", "vocab_fingerprint", "created")

    def has_add_permission(self, request):
        return False  # register through the API / jobs.services.model_register (path checks)


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "row_count", "gold", "owner", "created")
    list_filter = ("kind",)
    search_fields = ("name",)
    readonly_fields = ("path", "row_count", "created")

    def has_add_permission(self, request):
        return False  # upload through the API / jobs.services.dataset_create (file validation)


@admin.register(Artifact)
class ArtifactAdmin(admin.ModelAdmin):
    list_display = ("job", "stage", "kind", "path", "partial", "created")
    list_filter = ("kind", "partial")
    readonly_fields = ("job", "stage", "kind", "path", "partial", "created")

    def has_add_permission(self, request):
        return False


class WebhookDeliveryInline(admin.TabularInline):
    model = WebhookDelivery
    fields = ("event", "job", "attempt", "state", "status_code", "error", "attempted_at", "next_retry_at")
    readonly_fields = fields
    extra = 0
    max_num = 0  # the last deliveries, read only: a delivery is made by jobs.services.webhooks, never by hand
    ordering = ("-created", "-id")
    show_change_link = True


@admin.register(Webhook)
class WebhookAdmin(admin.ModelAdmin):
    """Staff can see a user's webhooks and their deliveries, pause one (active) or delete it. The URL is read only
    (jobs.services.webhook_create checks where it points) and the signing secret is never shown."""

    list_display = ("id", "owner", "url", "events", "active", "created")
    list_filter = ("active",)
    list_editable = ("active",)
    search_fields = ("url", "owner__username")
    fields = ("owner", "url", "events", "active", "created")
    readonly_fields = ("owner", "url", "events", "created")
    inlines = (WebhookDeliveryInline,)

    def has_add_permission(self, request):
        return False  # through the API / jobs.services.webhook_create (URL checks, secret shown once)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = ("delivery_id", "webhook", "event", "job", "attempt", "state", "status_code", "attempted_at")
    list_filter = ("state", "event")
    search_fields = ("delivery_id",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False  # the log of what was sent and answered


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "owner", "baseline", "created")
    search_fields = ("name", "owner__username")
    readonly_fields = ("owner", "request", "grid", "baseline", "created")

    def has_add_permission(self, request):
        return False  # through the API / jobs.services.experiments (one job per grid cell)
