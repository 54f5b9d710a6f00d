def log(msg):
    print(msg)


def get(key):
    return key.strip()
