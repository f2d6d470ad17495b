"""Device simulators: play a DJI device against a running dji_media deployment, so that a first
run shows a media library filling without an aircraft (doc/simulator.md).

- ``media``: the generated files (small JPEGs with the capture time and GPS position in their
  EXIF, along a short flight path, and one stand-in video) and their fingerprints. Shared by
  every simulator; Pillow is needed to make the JPEGs (``pip install 'dji-media[simulator]'``).
- ``pilot2``: DJI Pilot 2's HTTP flow (tiny-fingerprints, fast-upload, sts, PUT to the bucket
  with the temporary credentials, upload-callback, group-upload-callback).
- ``command``: the ``dji-media simulate-pilot`` command.

Nothing here is imported by the server: the package is a client of it.
"""
