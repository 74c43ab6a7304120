//! The QRC square root alone: `QrcKey::answer` on a 200-digit challenge,
//! with the test keys of tests/data/keys1.json and with a freshly generated
//! pair (so that the figure does not hinge on one lucky modulus).
//!
//!     cargo bench --bench qrc
//!
//! scripts/bench reads criterion's median from
//! target/criterion/qrc_answer/<key>/new/estimates.json.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dhid::qrc::{self, QrcKey};
use dhid::wire::Number;
use num_bigint::BigUint;

const KEYS: &str = include_str!("../tests/data/keys1.json");

/// The digits stored under `"name"` in the flat keys file.
fn key(name: &str) -> String {
    let quoted = format!("\"{name}\":");
    let at = KEYS.find(&quoted).expect("key in keys1.json") + quoted.len();
    KEYS[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect()
}

/// A deterministic byte source: the benchmark must not depend on the run.
fn splitmix(state: &mut u64) -> impl FnMut(&mut [u8]) + '_ {
    move |buf: &mut [u8]| {
        for b in buf {
            *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = *state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            *b = (z ^ (z >> 31)) as u8;
        }
    }
}

/// A challenge Y = X² mod N as the server sends it, with X < N from `seed`.
fn challenge(key: &QrcKey, seed: u64) -> (BigUint, Number) {
    let mut state = seed;
    let mut bytes = [0u8; 100];
    splitmix(&mut state)(&mut bytes);
    let x = BigUint::from_bytes_be(&bytes) % key.modulus();
    let y = (&x * &x) % key.modulus();
    (y.clone(), qrc::to_number(&y))
}

fn fresh_key() -> QrcKey {
    let mut state = 0x5eed_d41d;
    let mut fill = splitmix(&mut state);
    let p = qrc::random_prime_3mod4(100, &mut fill);
    let q = loop {
        let q = qrc::random_prime_3mod4(100, &mut fill);
        if q != p {
            break q;
        }
    };
    QrcKey::new(p, q).expect("generated primes are a valid key")
}

fn bench_answer(c: &mut Criterion) {
    let keys1 = QrcKey::from_decimal(&key("p"), &key("q")).expect("keys1.json is a valid key");
    let mut group = c.benchmark_group("qrc_answer");
    for (name, k) in [("keys1", keys1), ("fresh", fresh_key())] {
        let (y, field) = challenge(&k, 42);
        // A benchmark of a wrong answer would be worthless.
        let x = qrc::parse_number(&k.answer(&field));
        assert!(k.is_root(&x, &y), "{name}: the answer is not a square root");
        group.bench_function(name, |b| b.iter(|| k.answer(black_box(&field))));
    }
    group.finish();
}

criterion_group!(benches, bench_answer);
criterion_main!(benches);
