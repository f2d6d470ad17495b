"""The YAML configuration: the example file, ${VAR} expansion and refusals that name the key."""
from __future__ import annotations

import copy
import glob
import os
import re

import pytest
import yaml

from dji_media import (
    ConfigError,
    InMemoryMediaStore,
    MediaStore,
    MissingCapability,
    PeeweeMediaStore,
    StsCredentialProvider,
)
from dji_media.config import BackendSettings, load_config, parse_config
from dji_media.wiring import build_service
from dji_media.workers import check_shareable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "conf", "example.yaml")


@pytest.fixture
def raw():
    with open(EXAMPLE, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def test_example_config_loads_and_builds():
    config = load_config(EXAMPLE, environ={})
    assert config.media_store.cls is PeeweeMediaStore
    assert config.credentials.cls is StsCredentialProvider
    assert config.embedded_s3.port == 8333
    assert config.authenticator.options["tokens"] == {"demo-token-change-me": ["demo-workspace"]}
    service = build_service(config)
    assert service.credentials.object_key_prefix("w1") == "media/w1"
    assert service.expire_margin == 300


def test_environment_variables_fill_values_and_keys(raw):
    env = {"DJI_MEDIA_S3_SECRET_KEY": "from-env-secret", "DJI_MEDIA_DEMO_TOKEN": "token-from-env"}
    config = parse_config(raw, environ=env)
    assert config.credentials.options["secret_key"] == "from-env-secret"
    assert config.object_store.options["secret_key"] == "from-env-secret"
    assert config.authenticator.options["tokens"] == {"token-from-env": ["demo-workspace"]}


def test_empty_variable_takes_the_default_as_in_the_shell(raw):
    config = parse_config(raw, environ={"DJI_MEDIA_S3_SECRET_KEY": ""})
    assert config.credentials.options["secret_key"] == "dji-media-dev-secret"


def test_unset_variable_without_default_names_the_key(raw):
    raw["authenticator"] = {"backend": "jwt", "options": {"secret": "${JWT_SECRET}"}}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, environ={})
    assert info.value.key == "authenticator.options.secret" and "JWT_SECRET" in info.value.message


@pytest.mark.parametrize("change, key", [
    (lambda r: r.update(surprise=1), "surprise"),
    (lambda r: r["server"].update(prot=80), "server.prot"),
    (lambda r: r["server"].update(port="80"), "server.port"),
    (lambda r: r["server"].update(port=70000), "server.port"),
    (lambda r: r["logging"].update(level="loud"), "logging.level"),
    (lambda r: r["service"].update(expire_margin=-1), "service.expire_margin"),
    (lambda r: r["media_store"].update(backend="nosuch"), "media_store.backend"),
    (lambda r: r["media_store"].update(backend="os.path:join"), "media_store.backend"),
    (lambda r: r["media_store"].update(backend="no_such_module:Store"), "media_store.backend"),
    (lambda r: r["media_store"].update(backend="dji_media.backends.s3:MinioObjectStore"), "media_store.backend"),
    (lambda r: r["media_store"]["options"].update(colour="blue"), "media_store.options.colour"),
    (lambda r: r["media_store"]["options"].update(busy_timeout_ms="5s"), "media_store.options.busy_timeout_ms"),
    (lambda r: r["object_store"]["options"].pop("bucket"), "object_store.options.bucket"),
    (lambda r: r["object_store"]["options"].update(endpoint="127.0.0.1:8333"), "object_store.options"),
    (lambda r: r["credentials"]["options"].update(provider="gcs"), "credentials.options"),
    (lambda r: r["credentials"]["options"].update(duration_seconds=60), "credentials.options"),
    (lambda r: r["credentials"]["options"].update(prefix_template="media/*"), "credentials.options"),
    (lambda r: r["authenticator"]["options"].update(tokens={"t": ["w"]}), "authenticator.options"),
    (lambda r: r["authenticator"]["options"].update(tokens=["a-token-in-a-list"]), "authenticator.options.tokens"),
    (lambda r: r["credentials"]["options"].update(refresh_before=60), "credentials.options"),
    (lambda r: r["service"].update(expire_margin=700), "service.expire_margin"),
    (lambda r: r["embedded_s3"].update(access_key="k"), "embedded_s3.access_key"),
    (lambda r: r.pop("credentials"), "credentials"),
    (lambda r: r["embedded_s3"].update(port=60000), "embedded_s3.port"),
    (lambda r: r["service"].update(max_checks_per_request=0), "service.max_checks_per_request"),
    (lambda r: r["service"].update(verify_window_seconds=-1), "service.verify_window_seconds"),
    (lambda r: r["sweep"].update(period_seconds=0), "sweep.period_seconds"),
    (lambda r: r["sweep"].update(pages_per_second=0), "sweep.pages_per_second"),
    (lambda r: r["sweep"].update(lease_seconds=1), "sweep.lease_seconds"),
    (lambda r: r["sweep"].update(page_size=1001), "sweep.page_size"),
    (lambda r: r["sweep"].update(enabled="yes"), "sweep.enabled"),
    (lambda r: r["sweep"].update(every=60), "sweep.every"),
])
def test_bad_values_are_refused_naming_the_key(raw, change, key):
    bad = copy.deepcopy(raw)
    change(bad)
    with pytest.raises(ConfigError) as info:
        build_service(parse_config(bad, environ={}))
    assert info.value.key == key
    assert str(info.value).startswith(key)


class Fussy:
    """A backend constructor: refuses a value (ValueError) or, given ``bug``, fails as a bug would."""

    def __init__(self, *, url: str, bug: bool = False) -> None:
        if not url.startswith("x:"):
            raise ValueError("url must start with x:")
        if bug:
            len(None)  # a TypeError from inside the constructor


@pytest.mark.parametrize("options, message", [
    ({"url": "x:1", "colour": "blue"}, "media_store.options: Fussy: got an unexpected keyword argument 'colour'"),
    # Python 3.12 says "required keyword-only argument", older ones "required argument".
    ({}, "media_store.options: Fussy: missing a required (keyword-only )?argument: 'url'"),
    ({"url": "y:1"}, "media_store.options: url must start with x:"),
])
def test_options_that_do_not_fit_the_constructor_are_config_errors(options, message):
    # Settings made in code skip the YAML checks; build() still names the section.
    with pytest.raises(ConfigError) as info:
        BackendSettings(section="media_store", cls=Fussy, options=options).build()
    assert re.fullmatch(message if "(" in message else re.escape(message), str(info.value)), str(info.value)
    assert info.value.key == "media_store.options"


def test_a_type_error_inside_a_constructor_stays_a_bug():
    with pytest.raises(TypeError, match="has no len"):
        BackendSettings(section="media_store", cls=Fussy, options={"url": "x:1", "bug": True}).build()
    assert isinstance(BackendSettings(section="media_store", cls=Fussy, options={"url": "x:1"}).build(), Fussy)


def test_type_errors_do_not_quote_values(raw):
    raw["authenticator"]["options"]["tokens"] = ["a-secret-token-value"]
    with pytest.raises(ConfigError) as info:
        parse_config(raw, environ={})
    assert "a-secret-token-value" not in str(info.value) and "a list" in str(info.value)


def test_memory_backends_and_module_class_spec(raw):
    raw["media_store"] = {"backend": "dji_media.backends.memory:InMemoryMediaStore"}
    raw["object_store"] = {"backend": "memory"}
    service = build_service(parse_config(raw, environ={}))
    assert isinstance(service.media_store, InMemoryMediaStore)


def test_storage_truth_defaults_hold_at_fleet_scale(raw):
    """Without a service or sweep section: the sweep on, a 15-minute period, a one-hour window."""
    from dji_media.wiring import build_sweep

    del raw["service"], raw["sweep"]
    config = parse_config(raw, environ={})
    assert (config.sweep.period_seconds, config.sweep.pages_per_second, config.sweep.page_size) == (900, 10, 1000)
    service = build_service(config)
    assert (service.verify_window, service.max_checks_per_request) == (3600, 32)
    sweep = build_sweep(config, service)
    assert sweep is not None and (sweep.period, sweep.lease_seconds, sweep.verify_window) == (900, 60, 3600)
    # The shipped examples say the same, written out.
    example = load_config(EXAMPLE, environ={})
    assert (example.service.verify_window_seconds, example.sweep.period_seconds) == (3600, 900)
    assert build_sweep(parse_config(dict(raw, sweep={"enabled": False}), environ={}), service) is None


class OlderStore(InMemoryMediaStore):
    """A third party's store of an older release: no confirmations, nothing for the sweep."""


for _method in ("mark_verified", "confirm", "workspaces", "records_by_object_key", "acquire_lease"):
    setattr(OlderStore, _method, getattr(MediaStore, _method))


def test_the_sweep_and_the_window_adapt_to_an_older_store_unless_asked_for(raw, caplog):
    from dji_media.wiring import build_sweep

    raw["media_store"] = {"backend": "test_config:OlderStore"}
    raw["object_store"] = {"backend": "memory"}
    del raw["service"]["verify_window_seconds"], raw["sweep"]
    with caplog.at_level("WARNING", logger="dji_media.wiring"):
        config = parse_config(raw, environ={})
        service = build_service(config)  # left at their defaults: it keeps working as it did
        assert service.verify_window == 0 and build_sweep(config, service) is None
    assert "OlderStore cannot remember storage confirmations" in caplog.text
    assert "the storage sweep is off: OlderStore or InMemoryObjectStore cannot sweep" in caplog.text
    with pytest.raises(MissingCapability) as refused:  # asked for by name: refused, naming both
        build_service(parse_config(dict(raw, sweep={"enabled": True}), environ={}))
    assert "sweep.enabled" in refused.value.message and "OlderStore" in refused.value.message
    with pytest.raises(MissingCapability) as refused:
        build_service(parse_config(dict(raw, service={"verify_window_seconds": 60}), environ={}))
    assert "verify_window_seconds" in refused.value.message


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("server: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(bad))


# Values for the ${NAME}s without a default in conf/*.yaml; each must pass its option's checks.
# A new example that needs another variable adds it here.
EXAMPLE_ENV = {
    "DJI_MEDIA_DATABASE_URL": "postgresql://dji_media:example@db.invalid:5432/dji_media",
    "DJI_MEDIA_S3_ACCESS_KEY": "example-access-key",
    "DJI_MEDIA_S3_SECRET_KEY": "example-secret-key",
    "DJI_MEDIA_JWT_SECRET": "an-example-secret-of-32-bytes-at-least",
    "MQTT_PASSWORD": "example-broker-password",
}


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "conf", "*.yaml"))),
                         ids=os.path.basename)
@pytest.mark.gen_test
async def test_every_conf_example_loads_and_builds(path):
    config = load_config(path, environ=EXAMPLE_ENV)
    service = build_service(config)  # the constructors check endpoints, secrets, URLs
    try:
        # Only the development default may print a token at start-up.
        assert not config.server.demo_banner or config.embedded_s3 is not None
        if config.server.workers > 1:
            check_shareable(config)  # several workers need backends they can share
    finally:
        await service.close()


# ------------------------------------------------------------------------------ mqtt and devices

PRODUCTION = os.path.join(ROOT, "conf", "production.example.yaml")


def test_the_shipped_default_has_no_mqtt_and_the_production_example_does(raw):
    assert "mqtt" not in raw  # the README's first command needs no broker
    config = parse_config(raw, environ={})
    assert config.mqtt is None and config.devices.devices == {}
    with open(PRODUCTION, encoding="utf-8") as handle:
        production = yaml.safe_load(handle)
    config = parse_config(production, environ=EXAMPLE_ENV)
    assert config.mqtt is not None
    assert config.mqtt.broker_url.startswith("mqtts://") and config.mqtt.tls_verify
    assert config.mqtt.password == EXAMPLE_ENV["MQTT_PASSWORD"]  # from the environment, never the file
    assert config.devices.backend == "database"
    assert config.mqtt.shared_group


def mqtt_raw(raw, **mqtt):
    raw = copy.deepcopy(raw)
    raw["mqtt"] = dict({"broker_url": "mqtt://127.0.0.1:1883"}, **mqtt)
    return raw


def test_mqtt_defaults_and_the_devices_table(raw):
    changed = mqtt_raw(raw, password="${MQTT_PASSWORD}", username="dji-media")
    changed["devices"] = {"4TADKAQ000002J": "ws-a"}
    config = parse_config(changed, environ={"MQTT_PASSWORD": "secret-from-env"})
    assert config.mqtt.password == "secret-from-env"
    assert (config.mqtt.qos, config.mqtt.protocol, config.mqtt.tls_verify, config.mqtt.command_qos) == (1, "5", True, 0)
    assert config.devices.backend == "static" and dict(config.devices.devices) == {"4TADKAQ000002J": "ws-a"}
    changed["devices"] = {"backend": "database"}
    assert parse_config(changed, environ={"MQTT_PASSWORD": "p"}).devices.backend == "database"


@pytest.mark.parametrize("mqtt, devices, key", [
    ({"broker_url": ""}, None, "mqtt.broker_url"),
    ({"broker_url": "http://broker"}, None, "mqtt.broker_url"),
    ({"password": "p"}, None, "mqtt.password"),
    ({"protocol": 5}, None, "mqtt.protocol"),
    ({"qos": 3}, None, "mqtt.qos"),
    ({"tls_verify": False}, None, "mqtt.tls_verify"),
    ({"tls_ca_file": "/nonexistent/ca.pem"}, None, "mqtt.tls_ca_file"),
    ({"command_timeout_seconds": 0}, None, "mqtt.command_timeout_seconds"),
    ({"unknown": 1}, None, "mqtt.unknown"),
    ({}, {"DOCK/1": "ws-a"}, "devices"),
    ({}, {"DOCK1": "bad workspace!"}, "devices"),
    ({}, {"backend": "ldap"}, "devices.backend"),
    ({}, {"backend": "database", "devices": {"DOCK1": "ws-a"}}, "devices.devices"),
])
def test_bad_mqtt_and_devices_values_name_the_key(raw, mqtt, devices, key):
    changed = mqtt_raw(raw, **mqtt)
    if devices is not None:
        changed["devices"] = devices
    with pytest.raises(ConfigError) as exc:
        parse_config(changed, environ={})
    assert exc.value.key == key, exc.value.message


def test_several_workers_need_a_shared_group(raw):
    changed = mqtt_raw(raw)
    changed["server"] = dict(changed.get("server") or {}, workers=2)
    with pytest.raises(ConfigError) as exc:
        parse_config(changed, environ={})
    assert exc.value.key == "mqtt.shared_group"
    changed["mqtt"]["shared_group"] = "dji-media"
    assert parse_config(changed, environ={}).mqtt.shared_group == "dji-media"


def test_each_worker_gets_its_own_client_id(raw):
    from dji_media.devices import StaticDeviceDirectory
    from dji_media.wiring import build_device_directory, build_mqtt

    changed = mqtt_raw(raw, client_id="media", shared_group="g")
    changed["devices"] = {"DOCK1": "ws-a"}
    config = parse_config(changed, environ={})
    service = build_service(config)
    directory = build_device_directory(config, service)
    assert isinstance(directory, StaticDeviceDirectory) and directory.devices == {"DOCK1": "ws-a"}
    assert build_mqtt(config, service, directory).client_id == "media"
    assert build_mqtt(config, service, directory, worker_index=3).client_id == "media-3"
    assert build_mqtt(config, service, directory, worker_index=3).topics[0].startswith("$share/g/")


def test_the_key_prefix_switches_reach_the_service(raw):
    default = build_service(parse_config(raw, environ={}))
    assert (default.enforce_key_prefix, default.enforce_dock_key_prefix) == (True, True)
    raw["service"].update(enforce_dock_key_prefix=False)
    service = build_service(parse_config(raw, environ={}))
    assert (service.enforce_key_prefix, service.enforce_dock_key_prefix) == (True, False)
    with pytest.raises(ConfigError) as refused:
        parse_config(dict(raw, service={"enforce_dock_keys": False}), environ={})
    assert "enforce_dock_keys" in refused.value.message
