;; ledger: amounts under "acct" + big-endian u32 keys (so keys sort by account number), read back
;; with range scans (`db_scan`/`db_next`). `sum` can write while it scans; the scan does not see
;; those writes (an iterator is a snapshot of the range at `db_scan`, as in cosmwasm-vm).
(module
  (import "env" "db_write" (func $db_write (param i32 i32 i32 i32)))
  (import "env" "db_scan" (func $db_scan (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "db_next" (func $db_next (param i32 i32 i32 i32 i32 i32) (result i32)))
  (memory 1)
  ;; Scan start key at 0..8, scan end key at 8..16, key of `put` at 16..24, key buffer of
  ;; `db_next` at 32..41, value buffer at 48..56, the lengths `db_next` reports at 64..72.
  (data (i32.const 0) "acct")
  (data (i32.const 8) "acct")
  (data (i32.const 16) "acct")

  ;; Writes the key of `account` at `at`: "acct" is already there, then the number big-endian.
  (func $key (param $at i32) (param $account i32)
    (i32.store8 offset=4 (local.get $at) (i32.shr_u (local.get $account) (i32.const 24)))
    (i32.store8 offset=5 (local.get $at) (i32.shr_u (local.get $account) (i32.const 16)))
    (i32.store8 offset=6 (local.get $at) (i32.shr_u (local.get $account) (i32.const 8)))
    (i32.store8 offset=7 (local.get $at) (local.get $account)))

  (func (export "put") (param $account i32) (param $amount i64)
    (call $key (i32.const 16) (local.get $account))
    (i64.store (i32.const 48) (local.get $amount))
    (call $db_write (i32.const 16) (i32.const 8) (i32.const 48) (i32.const 8)))

  ;; Sums the amounts of the keys in [from, to) (`to` = -1: no end) in `order` (0 ascending,
  ;; 1 descending). With a non-zero `bonus`, adds it to each amount seen and writes a new key
  ;; right after each key seen (the key plus a zero byte) while scanning; `fail` then traps at
  ;; the end. Returns the sum of what the scan saw.
  (func (export "sum") (param $from i32) (param $to i32) (param $order i32) (param $bonus i64)
      (param $fail i32) (result i64)
    (local $it i32) (local $sum i64)
    (call $key (i32.const 0) (local.get $from))
    (call $key (i32.const 8) (local.get $to))
    (local.set $it
      (call $db_scan (i32.const 0) (i32.const 8) (i32.const 8)
        (select (i32.const -1) (i32.const 8) (i32.eq (local.get $to) (i32.const -1)))
        (local.get $order)))
    (block $done
      (loop $l
        (br_if $done
          (i32.eqz (call $db_next (local.get $it) (i32.const 32) (i32.const 9) (i32.const 48)
            (i32.const 8) (i32.const 64))))
        (local.set $sum (i64.add (local.get $sum) (i64.load (i32.const 48))))
        (if (i64.ne (local.get $bonus) (i64.const 0))
          (then
            (i64.store (i32.const 48) (i64.add (i64.load (i32.const 48)) (local.get $bonus)))
            (call $db_write (i32.const 32) (i32.load (i32.const 64)) (i32.const 48) (i32.const 8))
            (i32.store8 (i32.add (i32.const 32) (i32.load (i32.const 64))) (i32.const 0))
            (call $db_write (i32.const 32) (i32.add (i32.load (i32.const 64)) (i32.const 1))
              (i32.const 48) (i32.const 8))))
        (br $l)))
    (if (local.get $fail) (then (unreachable)))
    (local.get $sum))

  ;; Opens `n` iterators over everything and leaves them open.
  (func (export "open") (param $n i32)
    (loop $l
      (if (local.get $n)
        (then
          (drop (call $db_scan (i32.const 0) (i32.const -1) (i32.const 0) (i32.const -1)
            (i32.const 0)))
          (local.set $n (i32.sub (local.get $n) (i32.const 1)))
          (br $l))))))
