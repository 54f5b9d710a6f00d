import shop
from shop import get as fetch
from shop.adapters import MockAdapter
from shop.models import Item
from shop.sessions import mock_session


def main(items):
    shop.get("http://x")
    fetch("http://y")
    shop.post("http://z")
    item = Item("a")
    item.save()
    adapter = MockAdapter()
    adapter.send("GET", "u")
    session = mock_session()
    session.close()
    for other in items:
        other.save()


def get(url):
    return url
