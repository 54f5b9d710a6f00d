from .adapters import HTTPAdapter, MockAdapter
from .util import log


class BaseSession:
    def prepare(self, url):
        log("prepare")
        return url

    def close(self):
        return None


class Session(BaseSession):
    def __init__(self):
        self.adapter = HTTPAdapter()

    def request(self, method, url):
        url = self.prepare(url)
        return self.adapter.send(method, url)

    def close(self):
        self.adapter.close()
        super().close()


def mock_session() -> Session:
    s = Session()
    s.adapter = MockAdapter()
    return s
