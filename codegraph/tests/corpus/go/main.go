package main

import (
	"fmt"

	c "example.com/shop/cache"
	"example.com/shop/store"
)

func main() {
	s := store.New()
	fmt.Println(s.Get("a"))
	cc := c.New()
	cc.Get("b")
	s.Close()
}
