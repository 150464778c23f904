"""REST views for datasets: list, upload in any format ml.data_formats reads, and a preview that stores nothing.

Both writes are multipart forms (a file), read by jobs.api.parsers.SafeMultiPartParser; the rules live in
jobs.services.dataset_files. The serializers are here, beside the views that use them.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.settings import api_settings

from jobs import selectors
from jobs.api.parsers import SafeMultiPartParser
from jobs.api.views import ServiceAPIView
from jobs.models import Dataset
from jobs.services.dataset_files import dataset_preview, dataset_upload
from ml.data_formats import FORMATS, MAPPABLE, PREVIEW_ROWS, SHAPES

FILE_HELP = (
    f"The data: {', '.join(f.upper() for f in FORMATS)}, read through the datasets library, at most UPLOAD_MAX_BYTES. "
    "Shapes: prompt; prompt/response; prompt/chosen/rejected as strings or message lists (UltraFeedback); "
    "messages or conversations chats (the last assistant turn is the response); Alpaca instruction/input/output. "
    "docs/DATA.md has an example of each."
)


class DatasetSerializer(serializers.ModelSerializer):
    shared = serializers.SerializerMethodField()

    class Meta:
        model = Dataset
        fields = ["id", "name", "kind", "format", "row_count", "gold", "shared", "created"]

    def get_shared(self, obj) -> bool:
        return obj.owner_id is None


class DatasetFileSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=Dataset.Kind.choices, default=Dataset.Kind.PROMPTS)
    format = serializers.ChoiceField(
        choices=FORMATS, required=False, help_text="The file's format; absent: from the file name, else its content."
    )
    mapping = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=2000,
        help_text='A JSON object {column as read: column in the file}, e.g. {"prompt": "question", "response": '
        f'"answer"}}: renames the file\'s columns first. Columns: {", ".join(MAPPABLE)}.',
    )
    file = serializers.FileField(help_text=FILE_HELP)


class DatasetUploadSerializer(DatasetFileSerializer):
    name = serializers.CharField(max_length=200)
    gold = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")


class DatasetPreviewSerializer(serializers.Serializer):
    format = serializers.ChoiceField(choices=FORMATS, help_text="The format the file was read as.")
    shape = serializers.ChoiceField(choices=list(SHAPES), help_text="The shape its columns were read as.")
    shape_label = serializers.CharField(help_text="The shape in words.")
    columns = serializers.ListField(child=serializers.CharField(), help_text="The file's columns, as in the file.")
    row_count = serializers.IntegerField(help_text="Rows that would be stored.")
    rows = serializers.ListField(
        child=serializers.DictField(child=serializers.CharField()),
        help_text=f"The first {PREVIEW_ROWS} rows as they would be stored: prompt (and response), or "
        "prompt/chosen/rejected.",
    )


def _file_args(d: dict) -> dict:
    return {"file": d["file"], "kind": d["kind"], "fmt": d.get("format", ""), "mapping": d.get("mapping", "")}


class DatasetListView(ServiceAPIView):
    pagination_class = api_settings.DEFAULT_PAGINATION_CLASS
    # A file upload: form fields are checked like JSON bodies (jobs.api.parsers).
    parser_classes = [SafeMultiPartParser]

    @extend_schema(
        summary="List datasets",
        description="The prompt and preference datasets you can use in jobs: yours and the shared ones.",
        responses=DatasetSerializer(many=True),
    )
    def get(self, request):
        return self.paginate(request, selectors.datasets_visible(user=request.user), DatasetSerializer)

    @extend_schema(
        summary="Upload a dataset",
        description="A multipart form with the file, in any format and shape of docs/DATA.md; stored as JSONL "
        "(prompt, and response where the file has one; preferences: prompt, chosen, rejected). Errors name the "
        "row (a JSONL file's line too) and the column, e.g. \"row 7, column 'chosen': expected a string or a list "
        'of messages, got int". POST /datasets/preview/ shows what would be stored first.',
        request={"multipart/form-data": DatasetUploadSerializer},
        responses={201: DatasetSerializer},
    )
    def post(self, request):
        ser = DatasetUploadSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        d = ser.validated_data
        ds = dataset_upload(name=d["name"], gold=d.get("gold", ""), owner=request.user, **_file_args(d))
        return Response(DatasetSerializer(ds).data, status=status.HTTP_201_CREATED)


class DatasetPreviewView(ServiceAPIView):
    parser_classes = [SafeMultiPartParser]

    @extend_schema(
        summary="Preview a dataset upload",
        description=f"The same form as the upload (without name and gold): the file is read and checked as an "
        f"upload would be, and the first {PREVIEW_ROWS} rows come back as they would be stored, with the format, "
        "the shape and the row count. Nothing is stored. Errors are the upload's.",
        request={"multipart/form-data": DatasetFileSerializer},
        responses={200: DatasetPreviewSerializer},
    )
    def post(self, request):
        ser = DatasetFileSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        return Response(DatasetPreviewSerializer(dataset_preview(**_file_args(ser.validated_data))).data)
