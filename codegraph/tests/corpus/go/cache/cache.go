package cache

import "example.com/shop/store"

type Cache struct {
	backing *store.Store
}

func New() *Cache {
	return &Cache{backing: store.New()}
}

func (c *Cache) Get(k string) string {
	return c.backing.Get(k)
}

func trace(q string) string {
	return q
}
