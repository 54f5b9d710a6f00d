CREATE TABLE t (id bigserial PRIMARY KEY, v text NOT NULL);
