"""JSON bodies and messages: decoded once, refused when no store could hold them, and kept as
the text the device sent (the raw JSON of a record is that text, not a re-encoding)."""
import pytest

from dji_media.errors import BadRequest
from dji_media.json_body import decode_json_object, integer, string
from dji_media.mqtt import wire as mqtt_wire
from dji_media.web import wire as web_wire

KEY = "media/ws-a/DJI_20220831151616_0004_W.JPG"


def test_the_text_is_kept_as_sent():
    body = '{ "a" : "\\u4e2d\u6587 \\ud83d\\ude00",\n  "b": [1, 2.50] }'.encode()
    value, text = decode_json_object(body, noun="request body", field="body")
    assert value == {"a": "\u4e2d\u6587 \U0001F600", "b": [1, 2.5]}
    assert text == body.decode()


@pytest.mark.parametrize("body, message", [
    (b'{"a": "\\u0000"}', "request body contains a NUL character"),
    (b'{"a": "\\ud800"}', "request body contains an unpaired UTF-16 surrogate"),
    (b'{"a": "\\uDC00x"}', "request body contains an unpaired UTF-16 surrogate"),
    (b'[1, 2]', "request body must be a JSON object"),
    (b'{"a": 1', "request body is not valid JSON"),
    (b'{"a": "\xff"}', "request body is not valid UTF-8"),
    (b'{"a": "\x00"}', "request body is not valid JSON"),  # a raw control character
    (b"[" * 100000 + b"]" * 100000, "request body is nested too deeply"),
])
def test_what_no_store_could_hold_is_refused(body, message):
    with pytest.raises(BadRequest) as caught:
        decode_json_object(body, noun="request body", field="body")
    assert str(caught.value) == message
    assert caught.value.field == "body"


def test_readers_name_the_field():
    with pytest.raises(BadRequest, match="x.y must be a string"):
        string({"y": 1}, "y", 5, field="x.y")
    with pytest.raises(BadRequest, match="x.y is longer than 5 characters"):
        string({"y": "abcdef"}, "y", 5, field="x.y")
    with pytest.raises(BadRequest, match="n must be an integer"):
        integer({"n": True}, "n", field="n")
    assert integer({}, "n", field="n", default=7) == 7


def test_a_pilot_callback_keeps_its_body_as_raw_json():
    body = ('{"fingerprint": "F1",  "object_key": "%s",\n "ext": {"sn": "1AD3"}}' % KEY).encode()
    report = web_wire.parse_upload_callback(body)
    assert report.file.raw_json == body.decode()
    assert report.file.sn == "1AD3"


def test_a_dock_message_keeps_its_text_as_raw_json():
    payload = b'{"tid": "t", "bid": "b", "method": "file_upload_callback",  "data": {"x": "\\u00e9"}}'
    envelope = mqtt_wire.decode_envelope(payload)
    assert envelope.raw_json == payload.decode()
    assert envelope.data == {"x": "\u00e9"}
    with pytest.raises(BadRequest, match="message contains an unpaired UTF-16 surrogate"):
        mqtt_wire.decode_envelope(b'{"tid": "t", "bid": "b", "method": "m", "data": {"x": "\\ud800"}}')
