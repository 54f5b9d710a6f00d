class BaseAdapter:
    def send(self, method, url):
        raise NotImplementedError

    def close(self):
        pass


class HTTPAdapter(BaseAdapter):
    def send(self, method, url):
        return (method, url)

    def close(self):
        pass


class MockAdapter(BaseAdapter):
    def send(self, method, url):
        return None
