"""Implementations of the plugin interfaces shipped with dji_media.

Each module holds the backends of one technology, so that importing one never imports a driver
another needs. ``dji_media.config`` maps the short names used in YAML to these classes.
"""
