from shop.api import get
from shop.util import get as util_get
from client import main


def test_get():
    assert get("u")


def test_util_get():
    assert util_get("k") == "k"


def test_main():
    main([])
