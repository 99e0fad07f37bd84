"""The production storage for static files: hashed names, compressed copies, and hashed
imports between the web UI's ES modules."""

from __future__ import annotations

from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticStorage(CompressedManifestStaticFilesStorage):
    """WhiteNoise's manifest storage (`app.<hash>.css`, served with a far-future cache
    lifetime, plus gzip/brotli copies), with Django's rewriting of ES module imports switched
    on: `import { api } from "./api.js";` in a collected module becomes
    `from "./api.<hash>.js"`, so a cached module never imports a sibling from another release.
    (The rewriting only sees static `import`/`export ... from "...";` statements ending in a
    semicolon, which is how the UI's modules are written.)

    Where collectstatic has not run (no manifest: a benchmark or a one-off process on the
    production settings), names stay unhashed and WhiteNoise serves the files from the finders,
    instead of every page failing on a missing manifest entry."""

    support_js_module_import_aggregation = True

    def stored_name(self, name: str) -> str:
        if not self.hashed_files:
            return name
        return str(super().stored_name(name))
