"""Page weight of the web UI: the bytes of HTML, JavaScript and CSS a browser downloads to open
the chat, raw and gzip-compressed (what WhiteNoise and most proxies send). Baseline in the same
run: the same count for two pages Threadline already serves, the Django admin's index and the
Swagger UI API docs. Nothing is timed: these are sizes, which do not move with machine load.

    python bench/page_weight.py
"""

from __future__ import annotations

import gzip
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine_line, setup_django, table, write_section

ASSET = re.compile(r"""<(?:script[^>]+src|link[^>]+href)=["']([^"']+\.(?:js|css))["']""")


def _weigh(client: object, path: str) -> dict[str, int]:
    from django.contrib.staticfiles import finders
    from django.test import Client

    assert isinstance(client, Client)
    response = client.get(path, follow=True)
    assert response.status_code == 200, (path, response.status_code)
    html = response.content
    sizes = {"html": len(html), "html_gz": len(gzip.compress(html, 9)), "js": 0, "css": 0}
    sizes |= {"js_gz": 0, "css_gz": 0, "files": 0}
    for url in sorted(set(ASSET.findall(html.decode()))):
        name = url.split("/static/", 1)[1].split("?", 1)[0]
        found = finders.find(name)
        assert found, url
        data = Path(str(found)).read_bytes()
        kind = "js" if name.endswith(".js") else "css"
        sizes[kind] += len(data)
        sizes[f"{kind}_gz"] += len(gzip.compress(data, 9))
        sizes["files"] += 1
    return sizes


def main() -> None:
    with tempfile.TemporaryDirectory() as var_dir:
        setup_django(None, var_dir)
        from django.core.management import call_command
        from django.test import Client

        from threads.services import user_create

        call_command("migrate", verbosity=0)
        user = user_create(username="weigher", password=None, is_superuser=True)
        client = Client()
        client.force_login(user)
        pages = [
            ("Threadline web UI (`/`)", "/"),
            ("baseline: Django admin index (`/admin/`)", "/admin/"),
            ("baseline: Swagger UI (`/api/v1/docs/`)", "/api/v1/docs/"),
        ]
        rows = []
        results = {}
        for label, path in pages:
            sizes = _weigh(client, path)
            results[path] = sizes
            total = sizes["html"] + sizes["js"] + sizes["css"]
            total_gz = sizes["html_gz"] + sizes["js_gz"] + sizes["css_gz"]
            rows.append(
                [
                    label,
                    sizes["files"],
                    f"{sizes['js'] / 1024:.1f}",
                    f"{sizes['css'] / 1024:.1f}",
                    f"{sizes['html'] / 1024:.1f}",
                    f"{total / 1024:.1f}",
                    f"{total_gz / 1024:.1f}",
                ]
            )
    ui = results["/"]
    ui_gz = ui["html_gz"] + ui["js_gz"] + ui["css_gz"]
    swagger = results["/api/v1/docs/"]
    swagger_gz = swagger["html_gz"] + swagger["js_gz"] + swagger["css_gz"]
    body = "\n\n".join(
        [
            "## Web UI page weight (`bench/page_weight.py`)",
            "What a browser downloads to open the chat: the page's HTML and every script and "
            "stylesheet it links, raw and gzip-compressed (level 9), in KiB. The UI's JavaScript "
            "is its own ES modules (`app/*.js`) plus the vendored marked (Markdown) and DOMPurify (sanitiser); "
            "there are no fonts, images or web requests to other hosts. Baselines in the same "
            "run: two pages Threadline already serves. Chart images and API responses are not "
            "counted.\n" + machine_line(),
            table(
                ["page", "files", "JS KiB", "CSS KiB", "HTML KiB", "total KiB", "gzip KiB"],
                rows,
            ),
            f"- the chat page ships {ui['js'] / 1024:.0f} KiB of JavaScript and "
            f"{ui['css'] / 1024:.0f} KiB of CSS ({ui_gz / 1024:.0f} KiB compressed in all), "
            f"{swagger_gz / ui_gz:.1f}× less than the Swagger UI page.",
        ]
    )
    print(body)
    write_section("page_weight", body)


if __name__ == "__main__":
    main()
