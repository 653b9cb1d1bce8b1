-- pgbench script: one transfer between two distinct accounts drawn uniformly from 1..:accounts.
\set src random(1, :accounts)
\set dst random(1, :accounts - 1)
\if :dst >= :src
\set dst :dst + 1
\endif
-- The transfer (the same lines in hot.sql): both rows locked in id order (no deadlocks), the
-- sender's funds checked, both balances updated, the transfer recorded, one commit.
\set amount random(1, 100)
\set lo least(:src, :dst)
\set hi greatest(:src, :dst)
BEGIN;
SELECT balance AS lo_balance FROM accounts WHERE id = :lo FOR UPDATE \gset
SELECT balance AS hi_balance FROM accounts WHERE id = :hi FOR UPDATE \gset
\set src_balance case when :src = :lo then :lo_balance else :hi_balance end
\if :src_balance >= :amount
UPDATE accounts SET balance = balance - :amount WHERE id = :src;
UPDATE accounts SET balance = balance + :amount WHERE id = :dst;
INSERT INTO transfers (from_id, to_id, amount) VALUES (:src, :dst, :amount);
COMMIT;
\else
ROLLBACK;
\endif
