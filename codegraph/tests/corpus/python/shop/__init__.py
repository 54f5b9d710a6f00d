from .api import get, post
from . import models
