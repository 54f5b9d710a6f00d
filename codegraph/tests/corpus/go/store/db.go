package store

type DB struct{}

func openDB() *DB {
	return &DB{}
}

func (d *DB) Query(q string) string {
	return trace(q)
}

func (d *DB) Close() {}

func trace(q string) string {
	return q
}
