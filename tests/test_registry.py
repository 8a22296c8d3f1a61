import pytest

from testtime.registry import Registry


def test_register_get_list_and_errors():
    reg: Registry = Registry("thing")

    @reg.register("b", aliases=("bee",), note="x")
    def b():
        return 2

    reg.add("a", lambda: 1)
    assert reg.names() == ["a", "b"]
    assert reg.create("bee") == 2
    assert reg.meta("b") == {"note": "x"}
    with pytest.raises(KeyError, match="unknown thing 'c'; valid: a, b"):
        reg.get("c")
    with pytest.raises(ValueError, match="already registered"):
        reg.add("bee", lambda: 3)
