;; A CosmWasm counter contract in WAT, for the demo and the tests (the corpus is not committed
;; and a fresh machine cannot build wasm32 Rust). It speaks the CosmWasm ABI as cosmwasm-std
;; contracts do: Region arguments, a bump `allocate`, JSON messages, and a `ContractResult`.
;;
;; instantiate {"count":N}   execute {"increment":{}} | {"reset":{"count":N}}
;; query {"get_count":{}} -> {"count":N}       The count is stored under the key "count".
;; migrate {"count":N} sets the count; query {"write":{}} tries to write (and must fail).
(module
  (import "env" "db_read" (func $db_read (param i32) (result i32)))
  (import "env" "db_write" (func $db_write (param i32 i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 0) "count")
  (data (i32.const 16) "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
  (data (i32.const 128) "{\22ok\22:{\22messages\22:[],\22attributes\22:[],\22events\22:[],\22data\22:null}}")
  (data (i32.const 256) "{\22error\22:\22unknown message\22}")
  (data (i32.const 320) "{\22count\22:")
  (data (i32.const 352) "{\22ok\22:\22")

  (func (export "interface_version_8"))

  ;; Bump allocation, growing the memory as needed; never freed (an instance lives one call).
  (func $alloc_raw (param $n i32) (result i32)
    (local $p i32) (local $end i32)
    (local.set $p (global.get $heap))
    (local.set $end (i32.add (local.get $p) (i32.add (local.get $n) (i32.const 8))))
    (block $ok
      (loop $grow
        (br_if $ok (i32.le_u (local.get $end) (i32.mul (memory.size) (i32.const 65536))))
        (if (i32.lt_s (memory.grow (i32.const 1)) (i32.const 0)) (then unreachable))
        (br $grow)))
    (global.set $heap (i32.and (i32.add (local.get $end) (i32.const 7)) (i32.const -8)))
    (local.get $p))

  (func $allocate (export "allocate") (param $size i32) (result i32)
    (local $r i32)
    (local.set $r (call $alloc_raw (i32.const 12)))
    (i32.store (local.get $r) (call $alloc_raw (local.get $size)))
    (i32.store offset=4 (local.get $r) (local.get $size))
    (i32.store offset=8 (local.get $r) (i32.const 0))
    (local.get $r))

  (func (export "deallocate") (param i32))

  (func $copy (param $dst i32) (param $src i32) (param $n i32)
    (block $done
      (loop $next
        (br_if $done (i32.eqz (local.get $n)))
        (i32.store8 (local.get $dst) (i32.load8_u (local.get $src)))
        (local.set $dst (i32.add (local.get $dst) (i32.const 1)))
        (local.set $src (i32.add (local.get $src) (i32.const 1)))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $next))))

  ;; A new region holding `len` bytes from `ptr`.
  (func $region (param $ptr i32) (param $len i32) (result i32)
    (local $r i32)
    (local.set $r (call $allocate (local.get $len)))
    (call $copy (i32.load (local.get $r)) (local.get $ptr) (local.get $len))
    (i32.store offset=8 (local.get $r) (local.get $len))
    (local.get $r))

  ;; The first decimal number in region `r` (0 if none).
  (func $parse (param $r i32) (result i64)
    (local $p i32) (local $end i32) (local $c i32) (local $v i64) (local $seen i32)
    (local.set $p (i32.load (local.get $r)))
    (local.set $end (i32.add (local.get $p) (i32.load offset=8 (local.get $r))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $c (i32.load8_u (local.get $p)))
        (if (i32.and (i32.ge_u (local.get $c) (i32.const 48)) (i32.le_u (local.get $c) (i32.const 57)))
          (then
            (local.set $seen (i32.const 1))
            (local.set $v (i64.add (i64.mul (local.get $v) (i64.const 10))
                                   (i64.extend_i32_u (i32.sub (local.get $c) (i32.const 48))))))
          (else (br_if $done (local.get $seen))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (local.get $v))

  ;; Writes `v` in decimal at `dst`; returns the number of bytes.
  (func $itoa (param $dst i32) (param $v i64) (result i32)
    (local $tmp i32) (local $n i32) (local $i i32)
    (local.set $tmp (i32.const 400))
    (loop $digit
      (i32.store8 (i32.add (local.get $tmp) (local.get $n))
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $v) (i64.const 10)))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (local.set $v (i64.div_u (local.get $v) (i64.const 10)))
      (br_if $digit (i64.ne (local.get $v) (i64.const 0))))
    (loop $rev
      (i32.store8 (i32.add (local.get $dst) (local.get $i))
        (i32.load8_u (i32.add (local.get $tmp) (i32.sub (i32.sub (local.get $n) (local.get $i)) (i32.const 1)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $rev (i32.lt_u (local.get $i) (local.get $n))))
    (local.get $n))

  (func $store_count (param $v i64)
    (local $buf i32) (local $n i32)
    (local.set $buf (call $alloc_raw (i32.const 24)))
    (local.set $n (call $itoa (local.get $buf) (local.get $v)))
    (call $db_write (call $region (i32.const 0) (i32.const 5))
                    (call $region (local.get $buf) (local.get $n))))

  (func $load_count (result i64)
    (local $r i32)
    (local.set $r (call $db_read (call $region (i32.const 0) (i32.const 5))))
    (if (result i64) (i32.eqz (local.get $r))
      (then (i64.const 0))
      (else (call $parse (local.get $r)))))

  (func $ok (result i32) (call $region (i32.const 128) (i32.const 62)))

  (func (export "instantiate") (param $env i32) (param $info i32) (param $msg i32) (result i32)
    (call $store_count (call $parse (local.get $msg)))
    (call $ok))

  (func (export "execute") (param $env i32) (param $info i32) (param $msg i32) (result i32)
    (local $tag i32)
    (local.set $tag (i32.load8_u offset=2 (i32.load (local.get $msg))))
    (if (i32.eq (local.get $tag) (i32.const 105)) ;; 'i': increment
      (then
        (call $store_count (i64.add (call $load_count) (i64.const 1)))
        (return (call $ok))))
    (if (i32.eq (local.get $tag) (i32.const 114)) ;; 'r': reset
      (then
        (call $store_count (call $parse (local.get $msg)))
        (return (call $ok))))
    (call $region (i32.const 256) (i32.const 27)))

  (func (export "migrate") (param $env i32) (param $msg i32) (result i32)
    (call $store_count (call $parse (local.get $msg)))
    (call $ok))

  ;; query {"get_count":{}}: {"ok":"<base64 of {"count":N}>"}
  (func (export "query") (param $env i32) (param $msg i32) (result i32)
    (local $json i32) (local $n i32) (local $out i32) (local $o i32) (local $i i32) (local $b i32)
    (if (i32.eq (i32.load8_u offset=2 (i32.load (local.get $msg))) (i32.const 119)) ;; 'w'
      (then (call $store_count (i64.const 0))))
    (if (i32.ne (i32.load8_u offset=2 (i32.load (local.get $msg))) (i32.const 103))
      (then (return (call $region (i32.const 256) (i32.const 27)))))
    (local.set $json (call $alloc_raw (i32.const 48)))
    (call $copy (local.get $json) (i32.const 320) (i32.const 9))
    (local.set $n (i32.add (i32.const 9)
      (call $itoa (i32.add (local.get $json) (i32.const 9)) (call $load_count))))
    (i32.store8 (i32.add (local.get $json) (local.get $n)) (i32.const 125))
    (local.set $n (i32.add (local.get $n) (i32.const 1)))
    ;; three zero bytes of padding for the last group
    (i32.store (i32.add (local.get $json) (local.get $n)) (i32.const 0))
    (local.set $out (call $alloc_raw (i32.const 96)))
    (call $copy (local.get $out) (i32.const 352) (i32.const 7))
    (local.set $o (i32.add (local.get $out) (i32.const 7)))
    (block $done
      (loop $group
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $b (i32.or (i32.or
          (i32.shl (i32.load8_u (i32.add (local.get $json) (local.get $i))) (i32.const 16))
          (i32.shl (i32.load8_u (i32.add (local.get $json) (i32.add (local.get $i) (i32.const 1)))) (i32.const 8)))
          (i32.load8_u (i32.add (local.get $json) (i32.add (local.get $i) (i32.const 2))))))
        (i32.store8 (local.get $o) (i32.load8_u (i32.add (i32.const 16) (i32.shr_u (local.get $b) (i32.const 18)))))
        (i32.store8 offset=1 (local.get $o) (i32.load8_u (i32.add (i32.const 16) (i32.and (i32.shr_u (local.get $b) (i32.const 12)) (i32.const 63)))))
        (i32.store8 offset=2 (local.get $o) (i32.load8_u (i32.add (i32.const 16) (i32.and (i32.shr_u (local.get $b) (i32.const 6)) (i32.const 63)))))
        (i32.store8 offset=3 (local.get $o) (i32.load8_u (i32.add (i32.const 16) (i32.and (local.get $b) (i32.const 63)))))
        ;; padding: '=' for the bytes past the end
        (if (i32.ge_u (i32.add (local.get $i) (i32.const 1)) (local.get $n))
          (then (i32.store8 offset=2 (local.get $o) (i32.const 61))))
        (if (i32.ge_u (i32.add (local.get $i) (i32.const 2)) (local.get $n))
          (then (i32.store8 offset=3 (local.get $o) (i32.const 61))))
        (local.set $o (i32.add (local.get $o) (i32.const 4)))
        (local.set $i (i32.add (local.get $i) (i32.const 3)))
        (br $group)))
    (i32.store8 (local.get $o) (i32.const 34))
    (i32.store8 offset=1 (local.get $o) (i32.const 125))
    (local.set $o (i32.add (local.get $o) (i32.const 2)))
    (call $region (local.get $out) (i32.sub (local.get $o) (local.get $out))))
)
