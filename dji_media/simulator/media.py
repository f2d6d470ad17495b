"""The files a simulated flight produces, and the fingerprints a DJI device computes for them.

A mission is a short orbit around a start point: photos taken every few seconds along it, and
(from two files up) one short video at the end. The photos are real JPEGs, 640x480, a gradient
with the file's number drawn on it, carrying the EXIF a DJI camera writes: make and model,
the capture time (``DateTimeOriginal``, with ``OffsetTimeOriginal``) and the position and
altitude (the GPS IFD). The video is a stand-in: an MP4 file type box and random bytes, enough
for storage and the server, which never look inside.

Everything follows from (seed, mission name, start point, count): running the simulator again
with the same options makes byte-identical files, so the server recognises them and nothing is
uploaded twice. The mission name is part of the seed so that another mission is new files.

Pillow makes the JPEGs and is imported only when a mission is generated, so that this module
(and the command's ``--help``) loads without it.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import io
import math
import random
import re
import uuid
from typing import List, Tuple

__all__ = [
    "DEFAULT_FILES", "DEFAULT_MISSION", "DEFAULT_SEED", "DEFAULT_START", "MAX_FILES", "GeneratedFile", "Mission",
    "fingerprint", "generate_mission", "tiny_fingerprint",
]

DEFAULT_FILES = 12
MAX_FILES = 999  # the file number is four digits in DJI's names; a first run needs far fewer
DEFAULT_MISSION = "Simulated"
DEFAULT_SEED = 1
# The shoot position of doc/protocol.md's example (Shenzhen), whose capture times carry +08:00.
DEFAULT_START = (22.577666, 113.943194)
UTC_OFFSET = _dt.timezone(_dt.timedelta(hours=8))
# DJI does not document how many leading bytes its tiny fingerprint hashes; any fixed number
# serves the server, which only compares the strings.
TINY_PREFIX_BYTES = 8 * 1024

IMAGE_SIZE = (640, 480)
ORBIT_RADIUS_M = 120.0     # a short flight: every photo within a few hundred metres of the start
FLIGHT_ALTITUDE_M = 100.0  # relative to the take-off point, as DJI's metadata reports it
GROUND_ALTITUDE_M = 12.0   # the take-off point above sea level: absolute = ground + relative
VIDEO_BYTES = 192 * 1024
_MISSION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_METRES_PER_DEGREE = 111_320.0


@dataclasses.dataclass(frozen=True)
class GeneratedFile:
    """One file of a simulated mission, with what Pilot 2 says about it."""

    index: int                  # 1-based, as in the name
    name: str                   # DJI_<capture time>_<index>_W.JPG or .MP4
    kind: str                   # "photo" or "video"
    content_type: str
    data: bytes
    captured_at: _dt.datetime   # the camera's local time, with its offset
    lat: float
    lng: float
    relative_altitude: float
    absolute_altitude: float
    gimbal_yaw_degree: float    # -180..180, the aircraft's heading along the orbit
    fingerprint: str            # 32 uppercase hex: MD5 of the bytes
    tiny_fingerprint: str       # <md5 of the first bytes>_<Y>_<M>_<D>_<h>_<m>_<s>


@dataclasses.dataclass(frozen=True)
class Mission:
    """A simulated flight: the folder Pilot 2 keeps its files in, and the files."""

    name: str            # the mission's name (``--mission``), the folder's last part
    folder: str          # DJI_<start YYYYMMDDhhmm>_<NNN>_<name>, the file's "path"
    file_group_id: str   # a UUID, ext.file_group_id and group-upload-callback's key
    sn: str              # the aircraft's serial number, ext.sn
    files: Tuple[GeneratedFile, ...]


def fingerprint(data: bytes) -> str:
    """The full fingerprint: the MD5 of the file, in uppercase hexadecimal as DJI's devices send it."""
    return hashlib.md5(data).hexdigest().upper()


def tiny_fingerprint(data: bytes, captured_at: _dt.datetime) -> str:
    """``<md5 of the first bytes>_<Y>_<M>_<D>_<h>_<m>_<s>``: the capture time in the camera's
    local time, without leading zeros (doc/protocol.md, section 5)."""
    t = captured_at
    return (f"{hashlib.md5(data[:TINY_PREFIX_BYTES]).hexdigest()}_"
            f"{t.year}_{t.month}_{t.day}_{t.hour}_{t.minute}_{t.second}")


def check_mission_name(name: str) -> str:
    """The mission name becomes a folder in object keys: 1 to 32 of ``A-Z a-z 0-9 _ -``."""
    if not _MISSION_NAME.match(name):
        raise ValueError(f"mission name must be 1 to 32 of A-Z a-z 0-9 _ -, got {name!r}")
    return name


def generate_mission(
    files: int = DEFAULT_FILES, *, mission: str = DEFAULT_MISSION, seed: int = DEFAULT_SEED,
    start: Tuple[float, float] = DEFAULT_START,
) -> Mission:
    """The files of one simulated mission: ``files - 1`` photos and a video (one photo alone
    when ``files`` is 1), along an orbit around ``start`` (lat, lng). Deterministic: the same
    arguments give the same bytes. ``ValueError`` for an argument out of range; ``ImportError``
    when Pillow is missing."""
    if not 1 <= files <= MAX_FILES:
        raise ValueError(f"files must be between 1 and {MAX_FILES}, got {files}")
    check_mission_name(mission)
    lat0, lng0 = start
    if not (-85.0 <= lat0 <= 85.0 and -180.0 <= lng0 <= 180.0):
        raise ValueError(f"start must be a latitude within ±85 and a longitude within ±180, got {lat0}, {lng0}")
    # A string seed is hashed the same way in every process (unlike hash()), so runs agree.
    rng = random.Random(f"dji-media-simulator/{seed}/{mission}")
    take_off = (_dt.datetime(2024, 1, 1, 8, 0, tzinfo=UTC_OFFSET)
                + _dt.timedelta(days=rng.randrange(366), minutes=rng.randrange(8 * 60)))
    folder = f"DJI_{take_off:%Y%m%d%H%M}_{rng.randrange(1, 200):03d}_{mission}"
    file_group_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    sn = "1SIM" + "".join(rng.choice("0123456789ABCDEFGHJKLMNPQRSTUVWXYZ") for _ in range(10))
    colours = (_colour(rng), _colour(rng))

    made: List[GeneratedFile] = []
    when = take_off + _dt.timedelta(seconds=20)  # climbing to the orbit
    photos = files - 1 if files > 1 else 1
    for index in range(1, files + 1):
        # Evenly along the orbit, starting north of the start point and flying clockwise.
        angle = 2 * math.pi * (index - 1) / photos
        north, east = ORBIT_RADIUS_M * math.cos(angle), ORBIT_RADIUS_M * math.sin(angle)
        lat = round(lat0 + north / _METRES_PER_DEGREE, 6)
        lng = round(lng0 + east / (_METRES_PER_DEGREE * math.cos(math.radians(lat0))), 6)
        heading = (math.degrees(angle) + 90.0 + 180.0) % 360.0 - 180.0  # the tangent, clockwise
        relative = round(FLIGHT_ALTITUDE_M + rng.uniform(-0.5, 0.5), 3)
        absolute = round(GROUND_ALTITUDE_M + relative, 3)
        is_video = files > 1 and index == files
        stamp = f"DJI_{when:%Y%m%d%H%M%S}_{index:04d}_W"
        if is_video:
            data = _video(rng)
            name, kind, content_type = stamp + ".MP4", "video", "video/mp4"
        else:
            data = _jpeg(index, colours, when, lat, lng, absolute)
            name, kind, content_type = stamp + ".JPG", "photo", "image/jpeg"
        made.append(GeneratedFile(
            index=index, name=name, kind=kind, content_type=content_type, data=data, captured_at=when,
            lat=lat, lng=lng, relative_altitude=relative, absolute_altitude=absolute,
            gimbal_yaw_degree=round(heading, 1), fingerprint=fingerprint(data),
            tiny_fingerprint=tiny_fingerprint(data, when)))
        when += _dt.timedelta(seconds=4 + rng.randrange(3))
    return Mission(name=mission, folder=folder, file_group_id=file_group_id, sn=sn, files=tuple(made))


def _colour(rng: random.Random) -> Tuple[int, int, int]:
    return (rng.randrange(30, 226), rng.randrange(30, 226), rng.randrange(30, 226))


def _rational_dms(value: float) -> Tuple[object, object, object]:
    """A coordinate's absolute value as EXIF wants it: degrees, minutes, seconds, three RATIONALs."""
    from PIL.TiffImagePlugin import IFDRational  # type: ignore[import-not-found, unused-ignore]

    total = round(abs(value) * 3600 * 10_000)  # ten-thousandths of a second: millimetres
    degrees, rest = divmod(total, 3600 * 10_000)
    minutes, seconds = divmod(rest, 60 * 10_000)
    return IFDRational(degrees, 1), IFDRational(minutes, 1), IFDRational(seconds, 10_000)


def _jpeg(index: int, colours: Tuple[Tuple[int, int, int], Tuple[int, int, int]], when: _dt.datetime,
          lat: float, lng: float, altitude: float) -> bytes:
    # Without Pillow in the lint environment this import is untyped; with it, the ignore is unused.
    from PIL import ExifTags, Image, ImageDraw, ImageFont  # type: ignore[import-not-found, unused-ignore]
    from PIL.TiffImagePlugin import IFDRational  # type: ignore[import-not-found, unused-ignore]

    mask = Image.linear_gradient("L").resize(IMAGE_SIZE)
    image = Image.composite(Image.new("RGB", IMAGE_SIZE, colours[1]), Image.new("RGB", IMAGE_SIZE, colours[0]), mask)
    draw = ImageDraw.Draw(image)
    draw.text((IMAGE_SIZE[0] // 2, IMAGE_SIZE[1] // 2 - 30), f"#{index}", fill=(255, 255, 255),
              font=ImageFont.load_default(size=160), anchor="mm")
    draw.text((20, IMAGE_SIZE[1] - 60), f"{when.isoformat()}\n{lat:.6f}, {lng:.6f}  {altitude:.1f} m",
              fill=(255, 255, 255), font=ImageFont.load_default(size=20))

    exif = Image.Exif()
    taken = f"{when:%Y:%m:%d %H:%M:%S}"
    offset = when.strftime("%z")
    exif[0x010F] = "DJI"        # Make
    exif[0x0110] = "M30T"       # Model: the aircraft of drone_model_key 0-67-0
    exif[0x0132] = taken        # DateTime
    details = exif.get_ifd(ExifTags.IFD.Exif)
    details[0x9003] = taken     # DateTimeOriginal
    details[0x9004] = taken     # DateTimeDigitized
    details[0x9011] = f"{offset[:3]}:{offset[3:]}"  # OffsetTimeOriginal, e.g. +08:00
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[0x00] = b"\x02\x03\x00\x00"          # GPSVersionID 2.3
    gps[0x01] = "N" if lat >= 0 else "S"     # GPSLatitudeRef
    gps[0x02] = _rational_dms(lat)           # GPSLatitude
    gps[0x03] = "E" if lng >= 0 else "W"     # GPSLongitudeRef
    gps[0x04] = _rational_dms(lng)           # GPSLongitude
    gps[0x05] = b"\x00" if altitude >= 0 else b"\x01"        # GPSAltitudeRef: above sea level
    gps[0x06] = IFDRational(round(abs(altitude) * 1000), 1000)  # GPSAltitude, metres
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85, exif=exif)
    return out.getvalue()


def _box(kind: bytes, payload: bytes) -> bytes:
    """One ISO base media file box: 32-bit size, 4-byte type, payload."""
    return (8 + len(payload)).to_bytes(4, "big") + kind + payload


def _video(rng: random.Random) -> bytes:
    """A stand-in for a short video: an MP4 file type box, a note, and random bytes as media data.
    Players refuse it; storage and the server never look inside."""
    return (_box(b"ftyp", b"isom" + (512).to_bytes(4, "big") + b"isomiso2mp41")
            + _box(b"free", b"dji_media simulator: a stand-in video, not playable")
            + _box(b"mdat", rng.randbytes(VIDEO_BYTES)))
