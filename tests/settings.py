"""Test settings: the real settings with a throwaway var/ and a fast password hasher."""

import os
import tempfile

os.environ.setdefault("VAR_DIR", tempfile.mkdtemp(prefix="threadline-test-"))
os.environ["THREADLINE_TESTING"] = "1"

from chatproject.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
LOGGING["root"] = {"handlers": ["console"], "level": "WARNING"}  # noqa: F405

# Replies run synchronously at commit, with the scripted test LLM the tests install.
CELERY_TASK_ALWAYS_EAGER = True
CELERY_BROKER_URL = "memory://"

# Off by default so that no test depends on how many requests the ones before it made; the
# rate-limit tests turn it on with override_settings(RATE_LIMITS=True).
RATE_LIMITS = False
