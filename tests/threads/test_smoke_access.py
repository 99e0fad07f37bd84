import pytest

pytestmark = pytest.mark.django_db


def test_outsider_gets_the_same_404_as_a_missing_thread(cast):
    charlie = cast.client(cast.charlie)
    outsider = charlie.get(f"/api/v1/threads/{cast.thread.pk}/")
    missing = charlie.get("/api/v1/threads/thr_doesnotexist000000000/")
    assert outsider.status_code == missing.status_code == 404
    assert outsider.content == missing.content
    assert cast.client(cast.bob).get(f"/api/v1/threads/{cast.thread.pk}/").status_code == 200
