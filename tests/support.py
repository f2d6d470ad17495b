"""Constants and helpers shared by the test modules (conftest.py holds the fixtures)."""

ADMIN_KEY = "test-admin"
ADMIN_SECRET = "test-admin-secret"
BUCKET = "media"
OTHER_BUCKET = "other-bucket"
TOKEN_A = "token-for-workspace-a"
TOKEN_B = "token-for-workspace-b"


def s3_options(s3, **changes):
    options = dict(endpoint=s3.endpoint, access_key=ADMIN_KEY, secret_key=ADMIN_SECRET, bucket=BUCKET)
    options.update(changes)
    return options
