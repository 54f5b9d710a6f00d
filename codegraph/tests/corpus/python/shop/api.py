from .sessions import Session
from . import util as u


def request(method, url):
    session = Session()
    return session.request(method, url)


def get(url):
    return request("GET", url)


def post(url, data=None):
    u.log("post")
    return request("POST", url)
