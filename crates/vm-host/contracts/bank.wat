;; bank: balances in the host's key-value store, one key per account ("bal:" + u32 LE).
;; `transfer` traps when the payer's balance is too low, and the host rolls the call back.
(module
  (import "env" "db_read" (func $db_read (param i32 i32 i32 i32) (result i32)))
  (import "env" "db_write" (func $db_write (param i32 i32 i32 i32)))
  (import "env" "db_remove" (func $db_remove (param i32 i32)))
  (memory 1)
  (data (i32.const 0) "bal:")

  ;; Key of `account` at 0..8, value buffer at 16..24.
  (func $key (param $account i32)
    (i32.store (i32.const 4) (local.get $account)))

  (func $get (param $account i32) (result i64)
    (call $key (local.get $account))
    (if (result i64)
        (i32.lt_s (call $db_read (i32.const 0) (i32.const 8) (i32.const 16) (i32.const 8))
                  (i32.const 0))
      (then (i64.const 0))
      (else (i64.load (i32.const 16)))))

  (func $set (param $account i32) (param $amount i64)
    (call $key (local.get $account))
    (if (i64.eqz (local.get $amount))
      (then (call $db_remove (i32.const 0) (i32.const 8)))
      (else
        (i64.store (i32.const 16) (local.get $amount))
        (call $db_write (i32.const 0) (i32.const 8) (i32.const 16) (i32.const 8)))))

  (func (export "balance") (param $account i32) (result i64)
    (call $get (local.get $account)))

  (func (export "mint") (param $account i32) (param $amount i64) (result i64)
    (local $new i64)
    (local.set $new (i64.add (call $get (local.get $account)) (local.get $amount)))
    (call $set (local.get $account) (local.get $new))
    (local.get $new))

  ;; Moves `amount` from `from` to `to`; returns the payer's new balance.
  (func (export "transfer") (param $from i32) (param $to i32) (param $amount i64) (result i64)
    (local $left i64)
    (if (i32.eq (local.get $from) (local.get $to))
      (then (return (call $get (local.get $from)))))
    (local.set $left (i64.sub (call $get (local.get $from)) (local.get $amount)))
    ;; Credit first, then check: a failed check must undo the credit too.
    (call $set (local.get $to) (i64.add (call $get (local.get $to)) (local.get $amount)))
    (if (i64.lt_s (local.get $left) (i64.const 0))
      (then (unreachable)))
    (call $set (local.get $from) (local.get $left))
    (local.get $left)))
