"""The web UI's ES modules as the server ships them: every module preloaded by the page, and,
under the production static storage, every import rewritten to its sibling's hashed name (a
browser caches hashed files for good, so an unhashed import could mix two releases)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.core.management import call_command
from django.test import Client, override_settings

from tests.conftest import Cast

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
MODULES = ROOT / "static" / "threadline" / "app"
# How the modules import each other: the one form Django's manifest storage rewrites.
# `import { a } from "./x.js";` or `import "./x.js";`, each ending in a semicolon.
IMPORT = re.compile(r"""^import\b(?:[^;"']*?\bfrom)?\s*"(\./\w+\.js)";""", re.M)
ANY_IMPORT = re.compile(r"""^import\b[^;"']*["']([^"']+)["']""", re.M)


def _app_page(cast: Cast) -> str:
    client = Client()
    client.force_login(cast.alice)
    return client.get("/").content.decode()


def test_every_module_is_preloaded_and_main_is_the_one_module_script(cast: Cast) -> None:
    body = _app_page(cast)
    link = r'<link rel="modulepreload" href="/static/threadline/app/(\w+)\.js">'
    preloaded = re.findall(link, body)
    assert sorted(preloaded) == sorted(path.stem for path in MODULES.glob("*.js"))
    assert re.findall(r'<script type="module" src="([^"]+)">', body) == [
        "/static/threadline/app/main.js"
    ]


def test_modules_import_only_siblings_in_the_form_the_manifest_rewrites() -> None:
    for module in MODULES.glob("*.js"):
        text = module.read_text()
        every = ANY_IMPORT.findall(text)
        assert every == IMPORT.findall(text), module.name
        for name in every:
            assert (MODULES / name).is_file(), (module.name, name)
    assert "import(" not in "".join(p.read_text() for p in MODULES.glob("*.js"))


def test_collected_modules_import_their_hashed_siblings(cast: Cast, tmp_path: Path) -> None:
    storages = {
        "default": {"BACKEND": "django.core.files.storage.InMemoryStorage"},
        "staticfiles": {"BACKEND": "chatproject.staticfiles.StaticStorage"},
    }
    finders = ["django.contrib.staticfiles.finders.FileSystemFinder"]  # the UI's files only
    with override_settings(STORAGES=storages, STATIC_ROOT=tmp_path, STATICFILES_FINDERS=finders):
        call_command("collectstatic", interactive=False, verbosity=0)
        body = _app_page(cast)
        hashed = re.compile(r"/static/(threadline/app/\w+\.[0-9a-f]{12}\.js)")
        preloaded = set(hashed.findall(body))
        assert len(preloaded) == len(list(MODULES.glob("*.js")))
        # From main, every import names a hashed file that exists, and the hashed files the
        # imports name are exactly those the page preloads.
        seen: set[str] = set()
        todo = [next(name for name in preloaded if "/main." in name)]
        while todo:
            name = todo.pop()
            seen.add(name)
            text = (tmp_path / name).read_text()
            for target in ANY_IMPORT.findall(text):
                assert re.fullmatch(r"\./\w+\.[0-9a-f]{12}\.js", target), (name, target)
                resolved = f"threadline/app/{target[2:]}"
                assert (tmp_path / resolved).is_file(), resolved
                if resolved not in seen:
                    todo.append(resolved)
        assert seen == preloaded


def test_without_collectstatic_the_production_storage_serves_plain_names(
    cast: Cast, tmp_path: Path
) -> None:
    """A process on the production settings that never collected (a benchmark, a one-off
    command) still renders pages; WhiteNoise finds the files in static/."""
    storages = {
        "default": {"BACKEND": "django.core.files.storage.InMemoryStorage"},
        "staticfiles": {"BACKEND": "chatproject.staticfiles.StaticStorage"},
    }
    with override_settings(STORAGES=storages, STATIC_ROOT=tmp_path):
        assert '<script type="module" src="/static/threadline/app/main.js">' in _app_page(cast)
