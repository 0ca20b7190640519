"""The package top re-exports its public API, and __all__ says exactly what that is."""
import runtime


def test_all_is_honest():
    for name in runtime.__all__:
        assert hasattr(runtime, name), name
    public = {n for n in dir(runtime) if not n.startswith("_") and not isinstance(getattr(runtime, n), type(runtime))}
    assert public == set(runtime.__all__)
