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


def free_port(pair: bool = False) -> int:
    """A free loopback port; with ``pair``, one whose port+10000 is free too (SeaweedFS)."""
    import random
    import socket

    def free(port: int) -> bool:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    for _ in range(500):
        port = random.randint(23000, 32000)
        if free(port) and (not pair or free(port + 10000)):
            return port
    raise RuntimeError("no free port")
