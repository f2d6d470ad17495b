"""The credential cache every vendor shares (dji_media.backends.credentials), against a fake
vendor: no network, a clock the test moves, a fetch the test can hold, fail or count."""
from __future__ import annotations

import asyncio
import datetime as _dt
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from typing import List, Optional, Tuple

import pytest

import dji_media
from dji_media import StorageUnavailable, UploadCredentials
from dji_media.backends.credentials import IAM_UPLOAD_ACTIONS, CachingCredentialProvider, iam_upload_policy
from dji_media.interfaces import MIN_CREDENTIAL_SECONDS
from dji_media.testing.contracts import CredentialProviderContract
from dji_media.values import utc_now

REFRESH_BEFORE = 1800
LIFETIME = 3600


class Clock:
    """The time the provider sees; the test moves it (the providers' ``clock=``)."""

    def __init__(self) -> None:
        self.now = utc_now()

    def __call__(self) -> _dt.datetime:
        return self.now

    def to_expiry_minus(self, creds: UploadCredentials, seconds: float) -> None:
        self.now = creds.expires_at - _dt.timedelta(seconds=seconds)


class FakeVendor(CachingCredentialProvider):
    """A vendor as a third party would write one: its STS call (here a counter) and nothing else.

    ``failing`` makes the call fail as an unreachable STS would; ``gate``, when set, holds every
    call until the test opens it; ``lifetime`` is how long minted credentials last."""

    def __init__(self, **options) -> None:
        settings = dict(bucket="media", public_endpoint="https://s3.example.com/", policy=iam_upload_policy,
                        refresh_before=REFRESH_BEFORE, clock=utc_now)
        settings.update(options)
        super().__init__(**settings)
        self.now = settings["clock"]
        self.calls: List[Tuple[str, str]] = []
        self.failing = False
        self.lifetime = LIFETIME
        self.gate: Optional[threading.Event] = None

    def fetch(self, prefix: str, policy: str) -> UploadCredentials:
        self.calls.append((prefix, policy))
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        if self.failing:
            raise StorageUnavailable("storage credentials could not be issued: STS is unreachable")
        n = len(self.calls)
        return UploadCredentials(access_key_id=f"AK{n}", secret_access_key=f"secret-{n}",
                                 session_token=f"token-{n}",
                                 expires_at=self.now() + _dt.timedelta(seconds=self.lifetime))


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def vendor(clock, io_loop):
    provider = FakeVendor(clock=clock)
    yield provider
    io_loop.run_sync(provider.close)


async def wait_for_calls(vendor: FakeVendor, count: int) -> None:
    for _ in range(500):
        if len(vendor.calls) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fetch was called {len(vendor.calls)} time(s), expected {count}")


# ---------------------------------------------------------------------------- single flight

@pytest.mark.gen_test
async def test_concurrent_requests_for_one_prefix_share_one_fetch(vendor):
    vendor.gate = threading.Event()
    waiting = [asyncio.ensure_future(vendor.issue("ws-1")) for _ in range(20)]
    await wait_for_calls(vendor, 1)
    await asyncio.sleep(0.05)  # every request is now waiting, none has fetched on its own
    vendor.gate.set()
    grants = await asyncio.gather(*waiting)
    assert len(vendor.calls) == 1
    assert {g.credentials.access_key_id for g in grants} == {"AK1"}
    assert len({id(g) for g in grants}) == 1  # one grant object per set of credentials


@pytest.mark.gen_test
async def test_concurrent_requests_share_a_failed_fetch_too(vendor):
    """In an outage, waiting requests fail together after one attempt, not one after another."""
    vendor.failing = True
    vendor.gate = threading.Event()
    waiting = [asyncio.ensure_future(vendor.issue("ws-1")) for _ in range(10)]
    await wait_for_calls(vendor, 1)
    await asyncio.sleep(0.05)
    vendor.gate.set()
    outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert len(vendor.calls) == 1
    assert all(isinstance(o, StorageUnavailable) for o in outcomes), outcomes


@pytest.mark.gen_test
async def test_a_request_that_gives_up_does_not_cancel_the_fetch_of_the_others(vendor):
    vendor.gate = threading.Event()
    leaving = asyncio.ensure_future(vendor.issue("ws-1"))
    staying = asyncio.ensure_future(vendor.issue("ws-1"))
    await wait_for_calls(vendor, 1)
    leaving.cancel()
    vendor.gate.set()
    assert (await staying).credentials.access_key_id == "AK1"
    assert leaving.cancelled()
    assert len(vendor.calls) == 1


# ------------------------------------------------------------------------- cache and refresh

@pytest.mark.gen_test
async def test_cached_until_refresh_before_then_fetched_again(vendor, clock):
    first = (await vendor.issue("ws-1")).credentials
    clock.to_expiry_minus(first, REFRESH_BEFORE + 1)
    assert (await vendor.issue("ws-1")).credentials is first
    assert len(vendor.calls) == 1
    clock.to_expiry_minus(first, REFRESH_BEFORE)  # not more than refresh_before left: refresh
    second = (await vendor.issue("ws-1")).credentials
    assert second.access_key_id == "AK2"
    assert len(vendor.calls) == 2
    assert (await vendor.issue("ws-1")).credentials is second


@pytest.mark.gen_test
async def test_failed_refresh_keeps_credentials_that_are_still_valid(vendor, clock, caplog):
    first = (await vendor.issue("ws-1")).credentials
    vendor.failing = True
    clock.to_expiry_minus(first, 1000)
    with caplog.at_level(logging.WARNING, logger="dji_media.credentials"):
        assert (await vendor.issue("ws-1")).credentials is first
    assert "STS refresh failed; reusing credentials valid for 1000 s more" in caplog.text
    # The failure is not remembered: the next request asks STS again.
    clock.to_expiry_minus(first, MIN_CREDENTIAL_SECONDS)
    assert (await vendor.issue("ws-1")).credentials is first
    assert len(vendor.calls) == 3
    # Below MIN_CREDENTIAL_SECONDS they may not be handed out any more.
    clock.to_expiry_minus(first, MIN_CREDENTIAL_SECONDS - 1)
    with pytest.raises(StorageUnavailable, match="STS is unreachable"):
        await vendor.issue("ws-1")
    vendor.failing = False
    assert (await vendor.issue("ws-1")).credentials.access_key_id == "AK5"


@pytest.mark.gen_test
async def test_failure_with_nothing_cached_raises_and_is_not_cached(vendor):
    vendor.failing = True
    with pytest.raises(StorageUnavailable, match="STS is unreachable"):
        await vendor.issue("ws-1")
    vendor.failing = False
    assert (await vendor.issue("ws-1")).credentials.access_key_id == "AK2"


@pytest.mark.gen_test
async def test_credentials_that_expire_too_soon_are_a_failure(vendor, clock):
    vendor.lifetime = MIN_CREDENTIAL_SECONDS - 1
    with pytest.raises(StorageUnavailable, match="expire too soon"):
        await vendor.issue("ws-1")
    vendor.lifetime = LIFETIME
    good = (await vendor.issue("ws-1")).credentials
    clock.to_expiry_minus(good, 1000)
    vendor.lifetime = 60  # a refresh that comes back nearly expired keeps the cached set
    assert (await vendor.issue("ws-1")).credentials is good


@pytest.mark.gen_test
async def test_prefixes_are_cached_and_refreshed_separately(vendor, clock):
    one = await vendor.issue("ws-1")
    two = await vendor.issue("ws-2")
    assert (one.object_key_prefix, two.object_key_prefix) == ("media/ws-1", "media/ws-2")
    assert one.credentials.access_key_id != two.credentials.access_key_id
    assert [prefix for prefix, _ in vendor.calls] == ["media/ws-1", "media/ws-2"]
    # ws-2's STS failing leaves ws-1's cached credentials alone, and the reverse.
    vendor.failing = True
    with pytest.raises(StorageUnavailable):
        await vendor.issue("ws-3")
    assert (await vendor.issue("ws-1")).credentials is one.credentials
    assert (await vendor.issue("ws-2")).credentials is two.credentials


@pytest.mark.gen_test
async def test_grant_reports_the_configured_storage(vendor):
    grant = await vendor.issue("ws-1")
    assert (grant.bucket, grant.endpoint, grant.region, grant.provider) == \
        ("media", "https://s3.example.com", "us-east-1", "minio")
    assert grant.object_key_prefix == vendor.object_key_prefix("ws-1") == "media/ws-1"


# ---------------------------------------------------------------------------- the policy

def test_iam_policy_allows_only_uploads_under_the_prefix():
    assert IAM_UPLOAD_ACTIONS == ("s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts")
    assert json.loads(iam_upload_policy("media", "media/ws-1")) == {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
            "Resource": ["arn:aws:s3:::media/media/ws-1/*"],
        }],
    }


@pytest.mark.gen_test
async def test_fetch_receives_the_vendors_policy_for_its_prefix(clock):
    vendor = FakeVendor(clock=clock, policy=lambda bucket, prefix: f"{bucket} may upload under {prefix}")
    try:
        await vendor.issue("ws-1")
        await vendor.issue("ws-2")
    finally:
        await vendor.close()
    assert vendor.calls == [("media/ws-1", "media may upload under media/ws-1"),
                            ("media/ws-2", "media may upload under media/ws-2")]


@pytest.mark.gen_test
async def test_default_fetch_gets_the_iam_policy(vendor):
    await vendor.issue("ws-1")
    assert vendor.calls == [("media/ws-1", iam_upload_policy("media", "media/ws-1"))]


# ------------------------------------------------------------------------------- options

@pytest.mark.parametrize("options, error", [
    (dict(refresh_before=MIN_CREDENTIAL_SECONDS - 1), "refresh_before"),
    (dict(prefix_template="media/{workspace_id}/*"), "prefix_template"),
    (dict(prefix_template="media/{tenant}"), "prefix_template"),
    (dict(provider="gcs"), "provider"),
    (dict(bucket=""), "bucket"),
    (dict(public_endpoint="s3.example.com"), "public_endpoint"),
    (dict(clock="now"), "clock"),
    (dict(policy=None), "policy"),
])
def test_options_are_checked(options, error):
    with pytest.raises(ValueError, match=error):
        FakeVendor(**options)


class TestFakeVendorContract(CredentialProviderContract):
    """A third-party vendor checks itself with the same contract as the shipped providers."""

    @pytest.fixture
    def credential_provider(self, io_loop):
        provider = FakeVendor()
        yield provider
        io_loop.run_sync(provider.close)


# ------------------------------------------------------------------------------- imports

# Loads dji_media.backends.<module> without the package __init__ files (dji_media's imports
# every shipped backend, s3 among them), with minio and urllib3 made unimportable.
_ISOLATED_IMPORT = textwrap.dedent("""
    import importlib, importlib.abc, os, sys, types

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("minio", "urllib3"):
                raise ImportError(name + " is not to be imported")
            return None

    sys.meta_path.insert(0, Refuse())
    root = sys.argv[1]
    for name, path in (("dji_media", root), ("dji_media.backends", os.path.join(root, "backends"))):
        package = types.ModuleType(name)
        package.__path__ = [path]
        sys.modules[name] = package
    for module in sys.argv[2:]:
        importlib.import_module("dji_media.backends." + module)
    assert not [m for m in sys.modules if m.split(".")[0] in ("minio", "urllib3")]
""")


def _import_alone(*modules: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _ISOLATED_IMPORT, os.path.dirname(dji_media.__file__), *modules],
                          capture_output=True, text=True, timeout=60)


def test_credentials_and_storage_paths_import_no_storage_client():
    done = _import_alone("credentials", "storage_paths")
    assert done.returncode == 0, done.stderr


def test_the_import_check_catches_a_module_that_needs_minio():
    done = _import_alone("s3")
    assert done.returncode != 0 and "is not to be imported" in done.stderr, done.stderr
