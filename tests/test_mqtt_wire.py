"""The dock's MQTT wire format (dji_media.mqtt.wire), the dock values (dji_media.docks), the
device directories (dji_media.devices) and the transport's constructor checks. No broker here:
tests/test_mqtt_transport.py runs the transport against a real one."""
from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import json

import pytest

from dji_media.devices import InMemoryDeviceDirectory, StaticDeviceDirectory, check_gateway_sn
from dji_media.docks import DockUpload, check_dock_upload
from dji_media.errors import BadRequest, DatabaseUnavailable, StorageUnavailable
from dji_media.mqtt import MqttTransport, wire
from dji_media.values import StorageGrant, UploadCredentials, utc_now

SN = "4TADKAQ000002J"

# Protocol section 6.3's example, exactly.
CALLBACK = {
    "tid": "6a7bfe89-c386-4043-b600-b518e10096cc", "bid": "42a19f36-5117-4520-bd13-fd61d818d52e",
    "timestamp": 1712824470123, "gateway": SN, "need_reply": 1, "method": "file_upload_callback",
    "data": {
        "file": {
            "object_key": "media/ws-a/DJI_202404111632_005_ac793856-e9d0-4184-8b61-9d45c44179b1/"
                          "DJI_20240411163430_0001_V.jpeg",
            "path": "DJI_202404111632_005_ac793856-e9d0-4184-8b61-9d45c44179b1",
            "name": "DJI_20240411163430_0001_V.jpeg",
            "cloud_to_cloud_id": "DEFAULT",
            "ext": {"flight_id": "ac793856-e9d0-4184-8b61-9d45c44179b1", "drone_model_key": "0-91-0",
                    "payload_model_key": "1-81-0", "is_original": True},
            "metadata": {"gimbal_yaw_degree": "-91.40", "absolute_altitude": 56.311,
                         "relative_altitude": 41.124, "create_time": "2024-04-11 16:34:30",
                         "shoot_position": {"lat": 22.1, "lng": 113.9}}},
        "flight_task": {"uploaded_file_count": 12, "expected_file_count": 14, "flight_type": 0}}}


def envelope(obj) -> wire.Envelope:
    return wire.decode_envelope(json.dumps(obj).encode())


def callback(**changes):
    """The example with ``changes`` applied: dotted paths under data, None deletes."""
    message = copy.deepcopy(CALLBACK)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        target = message["data"]
        for key in parents:
            target = target[key]
        if value is None:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return message


# ------------------------------------------------------------------------------ topics


@pytest.mark.parametrize("topic, kind", [
    (f"thing/product/{SN}/requests", wire.REQUESTS),
    (f"thing/product/{SN}/events", wire.EVENTS),
    (f"sys/product/{SN}/status", wire.STATUS),
])
def test_topics_we_handle(topic, kind):
    route = wire.parse_topic(topic)
    assert (route.kind, route.gateway_sn) == (kind, SN)
    assert route.topic == topic and route.reply_topic == topic + "_reply"


@pytest.mark.parametrize("topic", [
    "thing/product/bad-sn/requests", "thing/product//events", "thing/product/A B/events",
    "thing/product/" + "A" * 129 + "/events", "thing/product/SN1/osd", "thing/product/SN1/services",
    "thing/product/SN1/events_reply", "sys/product/SN1/status_reply", "thing/product/SN1/events/x",
    "thing/product/SN\u00e91/events", "thing/product/SN1\n/events",
])
def test_other_topics_and_bad_serial_numbers_are_refused(topic):
    with pytest.raises(BadRequest):
        wire.parse_topic(topic)


# ------------------------------------------------------------------------------ the envelope


def test_envelope_fields():
    env = envelope(CALLBACK)
    assert (env.tid, env.bid, env.method, env.gateway, env.need_reply) == (
        CALLBACK["tid"], CALLBACK["bid"], "file_upload_callback", SN, 1)
    assert env.timestamp == 1712824470123
    assert json.loads(env.raw_json) == CALLBACK


def test_envelope_optional_fields():
    env = envelope({"tid": "t", "bid": "b", "method": "storage_config_get"})
    assert env.data == {} and env.gateway is None and env.need_reply is None and env.timestamp is None
    env = envelope({"tid": "t", "bid": "b", "method": "m", "data": None, "need_reply": True, "timestamp": "1"})
    assert env.data == {} and env.need_reply is None and env.timestamp is None


@pytest.mark.parametrize("payload", [
    b"", b"{", b"\xff\xfe", b"[]", b'"text"', b"null",
    b'{"bid": "b", "method": "m"}',  # no tid
    b'{"tid": "t", "method": "m"}',  # no bid
    b'{"tid": "t", "bid": "b"}',  # no method
    b'{"tid": 1, "bid": "b", "method": "m"}',
    b'{"tid": "", "bid": "b", "method": "m"}',
    b'{"tid": "t", "bid": "b", "method": "m", "data": []}',
    b'{"tid": "t", "bid": "b", "method": "m", "gateway": 5}',
    b'{"tid": "t", "bid": "b", "method": "m", "data": {"x": "a\\u0000b"}}',
    b'{"tid": "t", "bid": "b", "method": "m", "data": {"x": "\\ud800"}}',
    b'{"tid": "' + b"t" * 200 + b'", "bid": "b", "method": "m"}',
    b"[" * 100_000 + b"]" * 100_000,
])
def test_malformed_envelopes(payload):
    with pytest.raises(BadRequest):
        wire.decode_envelope(payload)


# ------------------------------------------------------------------------------ file_upload_callback


def test_file_upload_callback_of_section_6_3():
    report = wire.parse_file_upload_callback(envelope(CALLBACK), gateway_sn=SN, aircraft_sn="1581F6Q8D243M00C0A0B")
    assert report == DockUpload(
        result=0,
        object_key=CALLBACK["data"]["file"]["object_key"],
        name="DJI_20240411163430_0001_V.jpeg",
        path="DJI_202404111632_005_ac793856-e9d0-4184-8b61-9d45c44179b1",
        flight_id="ac793856-e9d0-4184-8b61-9d45c44179b1",
        drone_model_key="0-91-0", payload_model_key="1-81-0", is_original=True,
        sn="1581F6Q8D243M00C0A0B", gateway_sn=SN,
        gimbal_yaw_degree=-91.4, absolute_altitude=56.311, relative_altitude=41.124,
        create_time_text="2024-04-11 16:34:30",
        shoot_lat=22.1, shoot_lng=113.9, cloud_to_cloud_id="DEFAULT",
        raw_json=report.raw_json,
        expected_file_count=14, uploaded_file_count=12, flight_type=0,
    )
    assert json.loads(report.raw_json) == CALLBACK
    check_dock_upload(report)


def test_dock_3_without_flight_task_and_a_numeric_yaw():
    report = wire.parse_file_upload_callback(envelope(callback(flight_task=None, file__metadata__gimbal_yaw_degree=7)))
    assert report.gimbal_yaw_degree == 7.0
    assert (report.expected_file_count, report.uploaded_file_count, report.flight_type) == (None, None, None)
    assert report.sn is None and report.gateway_sn is None


def test_the_create_time_is_kept_as_text_and_never_given_a_zone():
    report = wire.parse_file_upload_callback(envelope(CALLBACK))
    assert report.create_time_text == "2024-04-11 16:34:30"
    assert not hasattr(report, "created_time")  # no instant is made up from local time


def test_result():
    assert wire.parse_file_upload_callback(envelope(callback(result=0))).result == 0
    assert wire.parse_file_upload_callback(envelope(callback(result=3, progress={"percent": 40}))).result == 3
    with pytest.raises(BadRequest, match="data.result"):
        wire.parse_file_upload_callback(envelope(callback(result="3")))


def test_only_the_file_and_its_object_key_are_required():
    report = wire.parse_file_upload_callback(envelope({"tid": "t", "bid": "b", "method": "file_upload_callback",
                                                       "data": {"file": {"object_key": "media/ws-a/x.obs"}}}))
    assert report.object_key == "media/ws-a/x.obs" and report.name is None and report.flight_id is None
    for broken, field in [(callback(file=None), "data.file"), (callback(file="x"), "data.file"),
                          (callback(file__object_key=None), "data.file.object_key"),
                          (callback(file__object_key=""), "data.file.object_key"),
                          (callback(file__object_key=7), "data.file.object_key"),
                          (callback(file__object_key="k" * 1025), "data.file.object_key"),
                          (callback(file__name="n" * 256), "data.file.name"),
                          (callback(file__path=["p"]), "data.file.path"),
                          (callback(file__ext__flight_id=12), "data.file.ext.flight_id"),
                          (callback(file__ext__flight_id="f" * 129), "data.file.ext.flight_id")]:
        with pytest.raises(BadRequest) as caught:
            wire.parse_file_upload_callback(envelope(broken))
        assert caught.value.field == field


def test_descriptive_metadata_is_lenient():
    report = wire.parse_file_upload_callback(envelope(callback(
        file__ext__drone_model_key=5, file__ext__is_original="yes", file__cloud_to_cloud_id={"a": 1},
        file__metadata__gimbal_yaw_degree="north", file__metadata__absolute_altitude="NaN",
        file__metadata__relative_altitude=True, file__metadata__create_time="t" * 65,
        file__metadata__shoot_position="here",
        flight_task={"expected_file_count": -1, "uploaded_file_count": "12", "flight_type": 1.5},
        file__ext__flight_id="")))
    assert (report.drone_model_key, report.is_original, report.cloud_to_cloud_id) == (None, None, None)
    assert (report.gimbal_yaw_degree, report.absolute_altitude, report.relative_altitude) == (None, None, None)
    assert (report.create_time_text, report.shoot_lat, report.shoot_lng) == (None, None, None)
    assert (report.expected_file_count, report.uploaded_file_count, report.flight_type) == (None, None, None)
    assert report.flight_id is None  # "" names no mission
    assert json.loads(report.raw_json)["data"]["file"]["metadata"]["gimbal_yaw_degree"] == "north"


def test_any_file_name_is_accepted():
    for name in ("DJI_0001.obs", "DJI_0001.rtk", "DJI_0001.mrk", "DJI_0001.nav", "DJI_0001.dat", "DJI_0001.MP4"):
        report = wire.parse_file_upload_callback(envelope(callback(file__name=name,
                                                                   file__object_key=f"media/ws-a/f/{name}")))
        assert report.name == name


# ------------------------------------------------------------------------------ the other methods


def test_storage_config_get_modules():
    base = {"tid": "t", "bid": "b", "method": "storage_config_get"}
    assert wire.parse_storage_config_get(envelope(dict(base, data={"module": 0}))) == 0
    assert wire.parse_storage_config_get(envelope(dict(base, data={"module": 1}))) == 1
    for data in ({}, {"module": 2}, {"module": "0"}, {"module": True}, {"module": -1}):
        with pytest.raises(BadRequest, match="data.module"):
            wire.parse_storage_config_get(envelope(dict(base, data=data)))


def test_highest_priority_upload():
    base = {"tid": "t", "bid": "b", "method": "highest_priority_upload_flighttask_media"}
    assert wire.parse_priority_flight(envelope(dict(base, data={"flight_id": "f1"}))) == "f1"
    for data in ({}, {"flight_id": ""}, {"flight_id": 3}):
        with pytest.raises(BadRequest, match="data.flight_id"):
            wire.parse_priority_flight(envelope(dict(base, data=data)))


def test_flighttask_progress():
    base = {"tid": "t", "bid": "b", "method": "flighttask_progress"}
    data = {"result": 0, "output": {"status": "ok", "progress": {"percent": 100},
                                    "ext": {"flight_id": "f1", "media_count": 31, "current_waypoint_index": 4}}}
    assert wire.parse_flighttask_progress(envelope(dict(base, data=data))) == ("f1", 31)
    for ext in ({"flight_id": "f1"}, {"media_count": 3}, {"flight_id": "f1", "media_count": -1},
                {"flight_id": 1, "media_count": 3}):
        assert wire.parse_flighttask_progress(envelope(dict(base, data={"output": {"ext": ext}}))) is None
    assert wire.parse_flighttask_progress(envelope(dict(base, data={"output": "x"}))) is None


def test_update_topo():
    base = {"tid": "t", "bid": "b", "method": "update_topo"}

    def aircraft(data):
        return wire.parse_update_topo(envelope(dict(base, data=data)))

    # DJI's documented example: sub-devices without a domain; a dock's only one is its aircraft.
    assert aircraft({"type": 98, "sub_type": 0, "sub_devices": [{"sn": "drone001", "type": 116, "index": "A"}]}) \
        == "drone001"
    assert aircraft({"domain": "3", "sub_devices": [{"sn": "RC1", "domain": "2"}, {"sn": "AC1", "domain": 0}]}) == "AC1"
    assert aircraft({"sub_devices": [{"sn": "AC1", "domain": "0"}]}) == "AC1"
    assert aircraft({"sub_devices": []}) is None
    assert aircraft({"sub_devices": [{"sn": "RC1", "domain": "2"}]}) is None
    assert aircraft({}) is None
    for data in ({"sub_devices": "AC1"}, {"sub_devices": ["AC1"]}, {"sub_devices": [{"sn": "A/C"}]},
                 {"sub_devices": [{"sn": None}]}):
        with pytest.raises(BadRequest):
            aircraft(data)


def test_handled_methods_by_topic():
    assert wire.HANDLED_METHODS == {
        wire.REQUESTS: ("storage_config_get",),
        wire.EVENTS: ("file_upload_callback", "highest_priority_upload_flighttask_media", "flighttask_progress"),
        wire.STATUS: ("update_topo",),
    }


# ------------------------------------------------------------------------------ replies


def test_reply_repeats_tid_bid_method_with_a_new_timestamp():
    env = envelope(CALLBACK)
    reply = json.loads(wire.render_reply(env, wire.event_result(), timestamp_ms=1712824471000))
    assert reply == {"tid": CALLBACK["tid"], "bid": CALLBACK["bid"], "timestamp": 1712824471000,
                     "method": "file_upload_callback", "data": {"result": 0}}


def test_request_results():
    grant = StorageGrant(bucket="b", endpoint="https://s3.example.com", region="r", provider="aws",
                         object_key_prefix="media/ws-a",
                         credentials=UploadCredentials("AK", "SK", None, utc_now() + _dt.timedelta(hours=1)))
    output = wire.render_grant(grant, 3300)
    assert output == {"bucket": "b", "credentials": {"access_key_id": "AK", "access_key_secret": "SK",
                                                     "expire": 3300, "security_token": ""},
                      "endpoint": "https://s3.example.com", "object_key_prefix": "media/ws-a",
                      "provider": "aws", "region": "r"}
    assert wire.request_result(0, output) == {"result": 0, "output": output}
    assert wire.request_result(503) == {"result": 503}
    assert wire.request_result(503, output) == {"result": 503}  # never credentials with a failure
    with pytest.raises(ValueError):
        wire.request_result(0)  # never result 0 without credentials


def test_the_error_table():
    assert wire.result_for(BadRequest("x")) == 400
    assert wire.result_for(StorageUnavailable("x")) == 503
    assert wire.result_for(DatabaseUnavailable("x")) == 503
    assert wire.result_for(KeyError("x")) == 500


# ------------------------------------------------------------------------------ values and directories


def test_check_dock_upload_bounds():
    good = DockUpload(result=0, object_key="media/ws-a/x.jpeg", flight_id="f1", expected_file_count=3)
    check_dock_upload(good)
    for change in (dict(object_key="/abs"), dict(object_key="a/../b"), dict(object_key=""),
                   dict(name="n" * 256), dict(flight_id="f" * 129), dict(sn="s" * 129),
                   dict(create_time_text="t" * 65), dict(expected_file_count=-1), dict(flight_type=True),
                   dict(result="0")):
        with pytest.raises(BadRequest):
            check_dock_upload(dataclasses.replace(good, **change))


def test_dock_upload_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DockUpload(result=0, object_key="k").result = 1  # type: ignore[misc]


@pytest.mark.gen_test
async def test_static_device_directory():
    directory = StaticDeviceDirectory({SN: "ws-a", "DOCK2": "ws-b"})
    assert await directory.workspace_of(SN) == "ws-a"
    assert await directory.workspace_of("OTHER") is None
    await directory.close()
    with pytest.raises(ValueError, match="bad-sn"):
        StaticDeviceDirectory({"bad-sn": "ws-a"})
    with pytest.raises(ValueError, match="workspace_id"):
        StaticDeviceDirectory({SN: "ws a"})


@pytest.mark.gen_test
async def test_in_memory_device_directory():
    directory = InMemoryDeviceDirectory({SN: "ws-a"})
    directory.bind("DOCK2", "ws-b")
    assert await directory.workspace_of("DOCK2") == "ws-b"
    directory.unbind(SN)
    assert await directory.workspace_of(SN) is None
    with pytest.raises(ValueError):
        directory.bind("DOCK/+", "ws-a")


def test_gateway_serial_numbers():
    assert check_gateway_sn("4TADKAQ000002J") == "4TADKAQ000002J"
    for sn in ("", "a-b", "a b", "+", "#", "a/b", "x" * 129, "\u0661\u0662"):
        with pytest.raises(BadRequest):
            check_gateway_sn(sn)


# ------------------------------------------------------------------------------ the transport's options


@pytest.mark.parametrize("options, message", [
    (dict(broker_url="http://broker:1883"), "mqtt:// or mqtts://"),
    (dict(broker_url="mqtt://"), "no host"),
    (dict(broker_url="mqtt://user:pw@broker"), "credentials"),
    (dict(broker_url="mqtt://broker/path"), "only a scheme"),
    (dict(broker_url="mqtt://broker:99999"), "not a URL"),
    (dict(client_id=""), "client_id"),
    (dict(client_id="a\nb"), "client_id"),
    (dict(password="pw"), "username"),
    (dict(protocol="4"), "protocol"),
    (dict(qos=3), "qos"),
    (dict(shared_group="a/b"), "shared_group"),
    (dict(shared_group="#"), "shared_group"),
    (dict(max_payload_bytes=0), "max_payload_bytes"),
    (dict(session_expiry_seconds=-1), "session_expiry_seconds"),
    (dict(max_concurrency=0), "max_concurrency"),
    (dict(reconnect_first_delay=0), "reconnect"),
    (dict(reconnect_first_delay=10, reconnect_max_delay=1), "reconnect"),
    (dict(tls_ca_file="/tmp/ca.pem"), "mqtts://"),
    (dict(tls_verify=False), "mqtts://"),
    (dict(broker_url="mqtts://broker", tls_ca_file="/nonexistent/ca.pem"), "TLS files"),
    (dict(broker_url="mqtts://broker", tls_key_file="/tmp/key.pem"), "tls_cert_file"),
])
def test_transport_options_are_checked_when_built(options, message):
    arguments = dict(broker_url="mqtt://broker.example:1883", client_id="dji-media-1")
    arguments.update(options)
    with pytest.raises(ValueError, match=message):
        MqttTransport(object(), InMemoryDeviceDirectory(), **arguments)  # type: ignore[arg-type]


def test_transport_topics_and_defaults():
    transport = MqttTransport(object(), InMemoryDeviceDirectory(),  # type: ignore[arg-type]
                              broker_url="mqtts://broker.example", client_id="c1", shared_group="media")
    assert (transport.host, transport.port) == ("broker.example", 8883)
    assert transport.topics == ("$share/media/thing/product/+/requests", "$share/media/thing/product/+/events",
                                "$share/media/sys/product/+/status")
    assert transport.qos == 1 and transport.reply_status is False and transport.name == "mqtt"
    plain = MqttTransport(object(), InMemoryDeviceDirectory(),  # type: ignore[arg-type]
                          broker_url="mqtt://broker.example", client_id="c1")
    assert plain.port == 1883 and plain.topics == wire.SUBSCRIPTIONS
    assert "pw" not in repr(MqttTransport(object(), InMemoryDeviceDirectory(),  # type: ignore[arg-type]
                                          broker_url="mqtt://b", client_id="c", username="u", password="pw"))
