package store

type Store struct {
	db *DB
}

func New() *Store {
	return &Store{db: openDB()}
}

func (s *Store) Get(k string) string {
	return s.db.Query(k)
}

func (s *Store) Close() {
	s.db.Close()
}
