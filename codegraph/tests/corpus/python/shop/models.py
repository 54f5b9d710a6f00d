from .util import get as util_get
import shop.util


class Item:
    def __init__(self, name):
        self.name = name

    def load(self):
        return util_get(self.name)

    def save(self):
        shop.util.log("save")
        return self.load()


class Order(Item):
    def save(self):
        self.load()
        return Item.save(self)
