from django.db import connection
from django.http import JsonResponse


def healthz(request):
    """Liveness + database check, for load balancers and `make demo`'s wait loop."""
    with connection.cursor() as cur:
        cur.execute("SELECT 1")
    return JsonResponse({"ok": True})
