"""Test support for dji_media and for third-party backends.

``dji_media.testing.contracts`` holds one contract test class per plugin interface. A backend's
test module subclasses the class and supplies the fixture(s) it names; every test then runs
against that backend. The tests need pytest and pytest-tornado (``pip install 'dji-media[test]'``).
"""
