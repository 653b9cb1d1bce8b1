-- pgbench script: every transfer between accounts 1 and 2, in either direction at random (the
-- opening balances are far larger than a run can move, so funds never run out).
\set src random(1, 2)
\set dst 3 - :src
-- The transfer (the same lines in uniform.sql): both rows locked in id order (no deadlocks), the
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
