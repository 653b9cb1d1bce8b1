-- The PostgreSQL row-lock design's tables, loaded afresh before every run by `python -m bench.pg`
-- (psql variables: accounts, the number of accounts; balance, each one's opening balance).
-- No foreign keys from transfers to accounts: the transfer script's SELECT ... FOR UPDATE is
-- where both accounts are found, and FK checks would only add work to PostgreSQL's side.
SET client_min_messages = warning;
DROP TABLE IF EXISTS transfers;
DROP TABLE IF EXISTS accounts;

CREATE TABLE accounts (
    id      integer PRIMARY KEY,
    balance bigint  NOT NULL CHECK (balance >= 0)
);

CREATE TABLE transfers (
    id         bigserial   PRIMARY KEY,
    from_id    integer     NOT NULL,
    to_id      integer     NOT NULL,
    amount     bigint      NOT NULL CHECK (amount > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO accounts (id, balance) SELECT n, :balance FROM generate_series(1, :accounts) AS n;
VACUUM ANALYZE accounts;
CHECKPOINT;
