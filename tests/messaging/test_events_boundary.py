"""Only messaging.events touches the channel layer (DESIGN.md): no other module of the apps asks
Channels for it, sends on it or reaches into channels-redis."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APPS = ("agents", "chatproject", "messaging", "threads")
# The layer itself and its configuration, not users of it: the embedded profile's thread-safe
# in-memory layer (a subclass of Channels' own), and the settings that name the backends.
ALLOWED = {"chatproject/embedded.py", "chatproject/settings.py"}
TOUCHES_THE_LAYER = re.compile(
    r"get_channel_layer|channels\.layers|channels_redis|channel_layer\.|group_send"
)


def test_nothing_outside_messaging_events_touches_the_channel_layer() -> None:
    offenders = []
    for app in APPS:
        for path in sorted((ROOT / app).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            if name.startswith("messaging/events/") or name in ALLOWED:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if TOUCHES_THE_LAYER.search(line):
                    offenders.append(f"{name}:{number}: {line.strip()}")
    assert offenders == []
