"""The public surface is deliberate: everything in __all__ exists, and nothing else is exported."""
import dji_media


def test_all_names_exist():
    missing = [name for name in dji_media.__all__ if not hasattr(dji_media, name)]
    assert missing == []


def test_no_accidental_exports():
    public = {name for name in vars(dji_media) if not name.startswith("_")}
    # Submodules are attributes of a package once imported; they are reached by their path.
    modules = {name for name in public if type(getattr(dji_media, name)).__name__ == "module"}
    assert public - modules == set(dji_media.__all__) - {"__version__"}


def test_error_tree():
    for name in ("BadRequest", "Unauthenticated", "Forbidden", "Unavailable", "ConfigError"):
        assert issubclass(getattr(dji_media, name), dji_media.DjiMediaError)
    assert issubclass(dji_media.StorageUnavailable, dji_media.Unavailable)
    assert issubclass(dji_media.PayloadTooLarge, dji_media.BadRequest)
