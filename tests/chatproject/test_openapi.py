"""The OpenAPI schema and the docs page, which loads nothing from a CDN."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from tests.conftest import Cast
from tests.factories import UserFactory
from tests.helpers import API, drain

pytestmark = pytest.mark.django_db

PATHS = {
    "/api/v1/me/": {"get"},
    "/api/v1/threads/": {"get", "post"},
    "/api/v1/threads/{thread_id}/": {"get", "patch", "delete"},
    "/api/v1/threads/{thread_id}/members/": {"get", "post"},
    "/api/v1/threads/{thread_id}/members/{user_id}/": {"delete"},
    "/api/v1/threads/{thread_id}/messages/": {"get", "post"},
    "/api/v1/messages/{message_id}/": {"get", "patch", "delete"},
    "/api/v1/topics/": {"get", "post"},
    "/api/v1/files/": {"post"},
    "/api/v1/files/{file_id}/": {"get"},
    "/api/v1/files/{file_id}/content/": {"get"},
}


def test_schema_lists_every_path_and_method(cast: Cast) -> None:
    response = cast.client(cast.alice).get(f"{API}/schema/?format=json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    documented = {
        path: {method for method in item if method in {"get", "post", "patch", "put", "delete"}}
        for path, item in schema["paths"].items()
    }
    # The foundation's paths, each with exactly its methods; later issues add more paths.
    assert {path: documented.get(path) for path in PATHS} == PATHS
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


def test_schema_is_served_as_yaml_by_default(cast: Cast) -> None:
    response = cast.client(cast.alice).get(f"{API}/schema/")
    assert response.status_code == 200
    assert b"/api/v1/threads/{thread_id}/messages/:" in response.content


def test_schema_names_the_upload_field_and_the_page_parameters(cast: Cast) -> None:
    schema = cast.client(cast.alice).get(f"{API}/schema/?format=json").json()
    upload = schema["paths"]["/api/v1/files/"]["post"]["requestBody"]["content"]
    assert upload["multipart/form-data"]["schema"]["required"] == ["file"]
    page = schema["paths"]["/api/v1/threads/{thread_id}/messages/"]["get"]
    assert {parameter["name"] for parameter in page["parameters"]} >= {"before", "after", "limit"}


def test_docs_page_opens_and_uses_no_cdn(cast: Cast) -> None:
    response = cast.client(cast.alice).get(f"{API}/docs/")
    assert response.status_code == 200
    html = response.content.decode().lower()
    assert "swagger" in html
    for needle in ("cdn", "unpkg", "jsdelivr"):
        assert needle not in html
    # Every script and stylesheet is ours, served from our own origin.
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html)
    assert assets
    assert all(asset.startswith("/static/") for asset in assets), assets


def test_docs_assets_are_served_locally(cast: Cast) -> None:
    html = cast.client(cast.alice).get(f"{API}/docs/").content.decode()
    client = APIClient()
    assets = re.findall(r'(?:src|href)="(/static/[^"]+\.(?:js|css))"', html)
    assert len(assets) >= 3
    for asset in assets:
        response = drain(client.get(asset))
        assert response.status_code == 200, asset
        assert response.body


@pytest.mark.parametrize("page", ["/", "/login/"])
def test_the_web_pages_use_no_cdn(page: str, db: None) -> None:
    client = APIClient()
    client.force_login(UserFactory.create())
    response = client.get(page)
    assert response.status_code in {200, 302}
    if response.status_code == 302:  # the login page sends a signed-in user to the app
        response = client.get(response["Location"])
    assert response.status_code == 200
    html = response.content.decode().lower()
    assert not re.search(r"""(?:src|href)=["']https?://""", html)


def test_schema_validates_against_the_openapi_spec(tmp_path: Path) -> None:
    call_command("spectacular", "--validate", "--file", str(tmp_path / "schema.yml"))
    assert (tmp_path / "schema.yml").read_text().startswith("openapi: 3")


def test_schema_generates_without_warnings(tmp_path: Path) -> None:
    call_command(
        "spectacular", "--fail-on-warn", "--format", "openapi-json", "--file", str(tmp_path / "s")
    )
    schema = json.loads((tmp_path / "s").read_text())
    operation_ids = [
        operation["operationId"] for item in schema["paths"].values() for operation in item.values()
    ]
    assert not [name for name in operation_ids if name.endswith("_2")]


def test_every_operation_documents_its_errors_with_the_one_error_shape(cast: Cast) -> None:
    schema = cast.client(cast.alice).get(f"{API}/schema/?format=json").json()
    error = schema["components"]["schemas"]["ErrorOutput"]
    assert set(error["properties"]) == {"error"}
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            assert {"401", "403"} <= set(responses), (method, path)
            if "{" in path:
                assert "404" in responses, (method, path)
            if "requestBody" in operation:
                assert {"400", "413"} <= set(responses), (method, path)
            for code, response in responses.items():
                if code.startswith("4"):
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/ErrorOutput", (method, path, code)


def test_list_endpoints_are_documented_as_the_objects_they_send(cast: Cast) -> None:
    schema = cast.client(cast.alice).get(f"{API}/schema/?format=json").json()
    for path, key in {
        "/api/v1/models/": "models",
        "/api/v1/topics/": "topics",
        "/api/v1/threads/{thread_id}/members/": "members",
        "/api/v1/threads/{thread_id}/artifacts/": "artifacts",
        "/api/v1/events/types/": "types",
    }.items():
        ok = schema["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
        name = ok["schema"]["$ref"].rsplit("/", 1)[1]
        component = schema["components"]["schemas"][name]
        assert component["type"] == "object", path
        assert component["properties"][key]["type"] == "array", path
