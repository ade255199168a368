;; counter: a contract whose state lives in all three places the host persists.
;; - a mutable global `$count`,
;; - linear memory (a cell at address 1024),
;; - key-value data (key "count").
;; Its data segments and start function run once, at deploy (genesis): `genesis_runs` stays 1
;; however many times the module is instantiated afterwards.
(module
  (import "env" "db_read" (func $db_read (param i32 i32 i32 i32) (result i32)))
  (import "env" "db_write" (func $db_write (param i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (global $count (mut i64) (i64.const 0))
  (global $genesis_runs (mut i32) (i32.const 0))
  (data (i32.const 0) "count")
  (data (i32.const 64) "strata counter v1")

  (func $init
    (global.set $genesis_runs (i32.add (global.get $genesis_runs) (i32.const 1))))
  (start $init)

  ;; Adds `n` to the global, the memory cell and the stored value; returns the new count.
  (func $add (export "add") (param $n i64) (result i64)
    (global.set $count (i64.add (global.get $count) (local.get $n)))
    (i64.store (i32.const 1024) (i64.add (i64.load (i32.const 1024)) (local.get $n)))
    (i64.store (i32.const 16) (global.get $count))
    (call $db_write (i32.const 0) (i32.const 5) (i32.const 16) (i32.const 8))
    (global.get $count))

  (func (export "increment") (result i64)
    (call $add (i64.const 1)))

  (func (export "get") (result i64)
    (global.get $count))

  (func (export "memory_count") (result i64)
    (i64.load (i32.const 1024)))

  (func (export "stored_count") (result i64)
    (if (i32.lt_s (call $db_read (i32.const 0) (i32.const 5) (i32.const 32) (i32.const 8))
                  (i32.const 0))
      (then (return (i64.const -1))))
    (i64.load (i32.const 32)))

  (func (export "genesis_runs") (result i32)
    (global.get $genesis_runs))

  ;; Reads back the greeting the genesis data segment wrote: its first 8 bytes.
  (func (export "greeting") (result i64)
    (i64.load (i32.const 64)))

  ;; Changes everything, then traps: the host must leave no trace of it.
  (func (export "add_then_trap") (param $n i64)
    (drop (call $add (local.get $n)))
    (drop (memory.grow (i32.const 1)))
    (unreachable))

  ;; Never returns: ends when the call runs out of fuel.
  (func (export "spin")
    (loop $forever (br $forever)))

  ;; memory.grow by `pages`; returns the old size in pages, or -1.
  (func (export "grow") (param $pages i32) (result i32)
    (memory.grow (local.get $pages)))

  (func (export "pages") (result i32)
    (memory.size))

  ;; Writes one byte at `addr` (traps out of bounds).
  (func (export "poke") (param $addr i32) (param $value i32)
    (i32.store8 (local.get $addr) (local.get $value)))

  (func (export "peek") (param $addr i32) (result i32)
    (i32.load8_u (local.get $addr))))
