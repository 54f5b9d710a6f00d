package store

import "testing"

func TestGet(t *testing.T) {
	s := New()
	if s.Get("x") != "x" {
		t.Fatal("mismatch")
	}
}
