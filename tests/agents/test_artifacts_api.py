"""The artifacts API on the embedded profile's FileSystemStorage: list, read, download, and
their removal with the thread; the cast tries every endpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.files.storage import FileSystemStorage

from agents import services
from agents.models import AgentRun, Artifact
from messaging.models import ThreadEvent
from tests.agents.crew_support import bare_run
from tests.conftest import Cast
from tests.helpers import API, MISSING_THREAD, assert_error, drain, png_bytes

pytestmark = pytest.mark.django_db(transaction=True)

MISSING_ARTIFACT = "art_doesnotexist0000000000"
CSP = "sandbox; default-src 'none'"


def _save(run: AgentRun, **overrides: Any) -> Artifact:
    fields: dict[str, Any] = {
        "agent": "analyst",
        "kind": "chart",
        "title": "Sales by region",
        "content_type": "image/png",
        "content": png_bytes(),
        "data": {"rows": [["North", "17.50"]]},
    }
    return services.artifact_save(run=run, **(fields | overrides))


@pytest.fixture
def made(cast: Cast) -> dict[str, Artifact]:
    run = bare_run(cast.thread, cast.alice)
    return {
        "chart": _save(run),
        "table": _save(
            run,
            kind="table",
            title="Sum by region",
            content_type="text/csv",
            content=b"region,sum\r\nNorth,17.50\r\n",
            data={"markdown": "| region | sum |"},
        ),
        "summary": _save(
            run,
            agent="researcher",
            kind="summary",
            title="Notes",
            content_type="text/markdown",
            content=b"# Notes\n\nAll good.\n",
            data={},
        ),
        "svg": _save(
            run,
            kind="file",
            title="drawing",
            content_type="image/svg+xml",
            content=b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
            data={},
        ),
        "html": _save(
            run,
            kind="file",
            title="page",
            content_type="text/html",
            content=b"<html><body><script>alert(document.cookie)</script></body></html>",
            data={},
        ),
    }


def test_members_list_a_threads_artifacts_oldest_first(
    cast: Cast, made: dict[str, Artifact]
) -> None:
    for user in (cast.alice, cast.bob, cast.admin):
        response = cast.client(user).get(f"{API}/threads/{cast.thread.pk}/artifacts/")
        assert response.status_code == 200, (user.username, response.content)
        listed = response.json()["artifacts"]
        assert [a["id"] for a in listed] == [a.pk for a in made.values()]
    chart = listed[0]
    assert chart == {
        "id": made["chart"].pk,
        "threadId": cast.thread.pk,
        "messageId": made["chart"].message_id,
        "runId": made["chart"].run_id,
        "kind": "chart",
        "title": "Sales by region",
        "contentType": "image/png",
        "size": len(png_bytes()),
        "data": {"rows": [["North", "17.50"]], "agent": "analyst"},
        "contentUrl": f"/api/v1/artifacts/{made['chart'].pk}/content/",
        "createdAt": chart["createdAt"],
    }
    assert chart["createdAt"].endswith("Z") or chart["createdAt"].endswith("+00:00")


def test_saving_an_artifact_stores_its_bytes_and_announces_it(
    cast: Cast, made: dict[str, Artifact]
) -> None:
    chart = made["chart"]
    assert chart.content.open("rb").read() == png_bytes()
    events = ThreadEvent.objects.filter(thread=cast.thread, type="chatArtifactAdded")
    assert [e.data["id"] for e in events.order_by("seq")] == [a.pk for a in made.values()]


def test_members_read_one_artifact(cast: Cast, made: dict[str, Artifact]) -> None:
    table = made["table"]
    for user in (cast.alice, cast.bob):
        response = cast.client(user).get(f"{API}/artifacts/{table.pk}/")
        assert response.status_code == 200
        body = response.json()
        assert (body["id"], body["kind"], body["data"]["markdown"]) == (
            table.pk,
            "table",
            "| region | sum |",
        )


@pytest.mark.parametrize(
    ("name", "inline", "filename"),
    [
        ("chart", True, "Sales by region.png"),
        ("table", False, "Sum by region.csv"),
        ("summary", False, "Notes.md"),
        ("svg", False, "drawing.svg"),
        ("html", False, "page.html"),
    ],
)
def test_content_is_served_safely(
    cast: Cast, made: dict[str, Artifact], name: str, inline: bool, filename: str
) -> None:
    artifact = made[name]
    expected = artifact.content.open("rb").read()
    for user in (cast.alice, cast.bob):
        response = drain(cast.client(user).get(f"{API}/artifacts/{artifact.pk}/content/"))
        assert response.status_code == 200
        assert response.body == expected
        assert response["Content-Type"].split(";")[0] == artifact.content_type
        assert response["Content-Security-Policy"] == CSP
        assert response["X-Content-Type-Options"] == "nosniff"
        disposition = response["Content-Disposition"]
        assert disposition.startswith("inline" if inline else "attachment"), disposition
        assert f'filename="{filename}"' in disposition


def test_outsiders_get_the_same_404_as_for_nothing(cast: Cast, made: dict[str, Artifact]) -> None:
    charlie = cast.client(cast.charlie)
    chart = made["chart"]
    for suffix in ("", "content/"):
        theirs = charlie.get(f"{API}/artifacts/{chart.pk}/{suffix}")
        missing = charlie.get(f"{API}/artifacts/{MISSING_ARTIFACT}/{suffix}")
        assert_error(theirs, 404, "not_found")
        assert theirs.content == missing.content
        assert "Location" not in theirs and "Content-Disposition" not in theirs
        # A member asking for a missing id sees the very same answer.
        assert cast.client(cast.alice).get(
            f"{API}/artifacts/{MISSING_ARTIFACT}/{suffix}"
        ).content == (missing.content)
    listed = charlie.get(f"{API}/threads/{cast.thread.pk}/artifacts/")
    nothing = charlie.get(f"{API}/threads/{MISSING_THREAD}/artifacts/")
    assert_error(listed, 404, "not_found")
    assert listed.content == nothing.content


@pytest.mark.parametrize("suffix", ["", "content/"])
def test_anonymous_is_401(cast: Cast, made: dict[str, Artifact], suffix: str) -> None:
    anonymous = cast.client(None)
    response = anonymous.get(f"{API}/artifacts/{made['chart'].pk}/{suffix}")
    assert_error(response, 401, "not_authenticated")
    assert "Location" not in response and "Content-Disposition" not in response
    listed = anonymous.get(f"{API}/threads/{cast.thread.pk}/artifacts/")
    assert_error(listed, 401, "not_authenticated")


def test_deleting_the_thread_removes_the_artifacts_and_their_files(
    cast: Cast, made: dict[str, Artifact]
) -> None:
    storage = made["chart"].content.storage
    assert isinstance(storage, FileSystemStorage)
    paths = [Path(storage.path(a.content.name)) for a in made.values()]
    assert all(path.is_file() for path in paths)
    # An artifact in another of alice's threads stays.
    from tests.factories import ThreadFactory

    other = _save(bare_run(ThreadFactory.create(creator=cast.alice), cast.alice), title="Keep")
    kept = Path(storage.path(other.content.name))

    # Bob is a member but not the owner: no.
    assert cast.client(cast.bob).delete(f"{API}/threads/{cast.thread.pk}/").status_code in (
        403,
        404,
    )
    assert all(path.is_file() for path in paths)

    response = cast.client(cast.alice).delete(f"{API}/threads/{cast.thread.pk}/")
    assert response.status_code == 204, response.content
    assert not Artifact.objects.filter(thread_id=cast.thread.pk).exists()
    assert [path for path in paths if path.exists()] == []
    assert Artifact.objects.filter(pk=other.pk).exists() and kept.is_file()
    gone = cast.client(cast.alice).get(f"{API}/artifacts/{made['chart'].pk}/content/")
    assert_error(gone, 404, "not_found")
