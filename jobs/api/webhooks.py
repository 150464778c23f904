"""REST views of a user's webhooks (docs/API.md "Webhooks", docs/NOTIFICATIONS.md): list, create (the secret is
in that answer only), show, delete, the delivery log, and a test ping. Only the owner sees a webhook: anyone
else gets the 404 of one that does not exist, staff included (a webhook is account settings, not a job).
Rules in jobs.services.webhooks."""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.settings import api_settings

from jobs.api.views import ServiceAPIView
from jobs.models import Webhook, WebhookDelivery
from jobs.services import webhooks as service


class WebhookSerializer(serializers.ModelSerializer):
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=Webhook.Event.choices),
        help_text="The events it receives: job.succeeded, job.failed, job.cancelled.",
    )

    class Meta:
        model = Webhook
        fields = ["id", "url", "events", "active", "created"]


class WebhookCreatedSerializer(WebhookSerializer):
    secret = serializers.CharField(
        help_text="The key of the X-Congweb-Signature HMAC. Shown in this answer only: store it now."
    )

    class Meta(WebhookSerializer.Meta):
        fields = [*WebhookSerializer.Meta.fields, "secret"]


class WebhookCreateSerializer(serializers.Serializer):
    url = serializers.CharField(
        max_length=500, help_text="http:// or https://; private and loopback addresses only where allowed."
    )
    secret = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=200,
        help_text=f"At least {service.SECRET_MIN_LENGTH} characters; left out, one is generated.",
    )
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=Webhook.Event.choices),
        required=False,
        help_text="Left out or empty: every event.",
    )
    active = serializers.BooleanField(required=False, default=True)


class WebhookDeliverySerializer(serializers.ModelSerializer):
    delivery_id = serializers.UUIDField(help_text="The same on every attempt of one event (receivers dedupe on it).")
    job = serializers.IntegerField(source="job_id", allow_null=True, help_text="null for a ping.")
    payload = serializers.JSONField(help_text="The JSON body sent (docs/NOTIFICATIONS.md).")

    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "delivery_id",
            "event",
            "job",
            "attempt",
            "state",
            "status_code",
            "error",
            "response_excerpt",
            "created",
            "attempted_at",
            "next_retry_at",
            "payload",
        ]


class _OwnWebhook(ServiceAPIView):
    def get_webhook(self, request, pk) -> Webhook:
        hook = Webhook.objects.filter(pk=pk, owner=request.user).first()
        if hook is None:
            raise Http404("no such webhook")
        return hook


class WebhookListView(_OwnWebhook):
    @extend_schema(
        summary="List your webhooks",
        description="Your webhooks, oldest first, without their secrets.",
        responses=WebhookSerializer(many=True),
    )
    def get(self, request):
        return Response(WebhookSerializer(Webhook.objects.filter(owner=request.user), many=True).data)

    @extend_schema(
        summary="Create a webhook",
        description="A URL that gets a signed JSON POST when one of your jobs ends (docs/NOTIFICATIONS.md). The "
        "answer holds the secret, the only time it is shown. 400: a URL that is not http(s), does not resolve, "
        "or is a private address where those are refused; a short secret; an unknown event; too many webhooks.",
        request=WebhookCreateSerializer,
        responses={201: WebhookCreatedSerializer},
    )
    def post(self, request):
        ser = WebhookCreateSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        hook = service.webhook_create(owner=request.user, **ser.validated_data)
        return Response(WebhookCreatedSerializer(hook).data, status=status.HTTP_201_CREATED)


class WebhookDetailView(_OwnWebhook):
    @extend_schema(
        summary="Show a webhook",
        description="One of your webhooks, without its secret.",
        responses=WebhookSerializer,
    )
    def get(self, request, pk):
        return Response(WebhookSerializer(self.get_webhook(request, pk)).data)

    @extend_schema(
        summary="Delete a webhook",
        description="Deletes the webhook and its delivery log; deliveries still queued are dropped.",
        responses={204: None},
    )
    def delete(self, request, pk):
        service.webhook_delete(webhook=self.get_webhook(request, pk))
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookDeliveriesView(_OwnWebhook):
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS

    @extend_schema(
        summary="List a webhook's deliveries",
        description="Every attempt, newest first: its state (pending, delivered, retrying, failed), the receiver's "
        "status code and the start of its answer, or the error; a retried attempt says when the next one is due.",
        responses=WebhookDeliverySerializer(many=True),
    )
    def get(self, request, pk):
        hook = self.get_webhook(request, pk)
        return self.paginate(request, hook.deliveries.all(), WebhookDeliverySerializer)


class WebhookTestView(_OwnWebhook):
    @extend_schema(
        summary="Send a test ping",
        description='Queues a delivery of the event "ping" (signed and retried like any other); its result shows '
        "in the delivery log.",
        request=None,
        responses={202: WebhookDeliverySerializer},
    )
    def post(self, request, pk):
        row = service.webhook_ping(webhook=self.get_webhook(request, pk))
        return Response(WebhookDeliverySerializer(row).data, status=status.HTTP_202_ACCEPTED)
