//! QRC arithmetic: the square-root challenge of PROTOCOL.md section 7.
//!
//! The server knows N = P·Q and sends Y = X² mod N; the client, holding the
//! primes P ≡ Q ≡ 3 (mod 4), answers the one square root of Y that is itself
//! a quadratic residue mod P and mod Q (the "principal" root), the only one
//! dhisd accepts.

use std::fmt;
use std::sync::{Arc, OnceLock};

use num_bigint::BigUint;
use num_traits::{One, ToPrimitive, Zero};

use crate::wire::{NUMBER_LEN, Number};

mod montgomery;

use montgomery::Modulus;

/// Why a key pair cannot be used. Shown to the administrator at load time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyError {
    NotDecimal { which: char },
    NotPrime { which: char },
    Not3Mod4 { which: char },
    Equal,
    TooLarge { digits: usize },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::NotDecimal { which } => {
                write!(f, "Auth{which} must be decimal digits only")
            }
            KeyError::NotPrime { which } => write!(f, "Auth{which} is not a prime"),
            KeyError::Not3Mod4 { which } => {
                write!(
                    f,
                    "Auth{which} is not 3 mod 4, so it cannot answer QRC challenges"
                )
            }
            KeyError::Equal => f.write_str("AuthP and AuthQ are the same number"),
            KeyError::TooLarge { digits } => write!(
                f,
                "AuthP x AuthQ has {digits} digits, more than the {NUMBER_LEN} the protocol carries"
            ),
        }
    }
}

impl std::error::Error for KeyError {}

/// A private key. Shared, not copied: the configuration and the record
/// hold the same.
///
/// Made in two steps, so that dhid can send its first datagrams between
/// them: `unchecked` does the checks that cost nothing, `check` the
/// primality round and the arithmetic the square root needs (about
/// 0.1 ms). `from_decimal` and `new` do both.
#[derive(Clone)]
pub struct QrcKey(Arc<KeyParts>);

struct KeyParts {
    p: BigUint,
    q: BigUint,
    n: BigUint,
    exp_p: BigUint,
    exp_q: BigUint,
    /// Computed once, by `check` or at the first square root.
    crt: OnceLock<Crt>,
}

/// What the square root by CRT needs beyond the primes.
struct Crt {
    mod_p: Modulus,
    mod_q: Modulus,
    q_inv_p: BigUint,
}

impl fmt::Debug for QrcKey {
    // The primes are the secret; only the public modulus's size is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "QrcKey({} digit modulus)",
            self.0.n.to_str_radix(10).len()
        )
    }
}

impl PartialEq for QrcKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.p == other.0.p && self.0.q == other.0.q
    }
}

impl Eq for QrcKey {}

fn parse_decimal(text: &str, which: char) -> Result<BigUint, KeyError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(KeyError::NotDecimal { which });
    }
    BigUint::parse_bytes(text.as_bytes(), 10).ok_or(KeyError::NotDecimal { which })
}

impl QrcKey {
    pub fn from_decimal(p: &str, q: &str) -> Result<QrcKey, KeyError> {
        QrcKey::new(parse_decimal(p, 'P')?, parse_decimal(q, 'Q')?)
    }

    pub fn new(p: BigUint, q: BigUint) -> Result<QrcKey, KeyError> {
        let key = QrcKey::unchecked(p, q)?;
        key.check()?;
        Ok(key)
    }

    /// `unchecked` from decimal text.
    pub fn unchecked_decimal(p: &str, q: &str) -> Result<QrcKey, KeyError> {
        QrcKey::unchecked(parse_decimal(p, 'P')?, parse_decimal(q, 'Q')?)
    }

    /// Every check but primality: 3 mod 4, distinct, N within the wire's
    /// 200 digits. The key must pass `check` before it answers anything.
    pub fn unchecked(p: BigUint, q: BigUint) -> Result<QrcKey, KeyError> {
        for (which, x) in [('P', &p), ('Q', &q)] {
            // Trial division is cheap and names the fault of an even or
            // otherwise obviously composite number better than 3 mod 4.
            if has_small_factor(x) {
                return Err(KeyError::NotPrime { which });
            }
            if x % 4u32 != BigUint::from(3u32) {
                return Err(KeyError::Not3Mod4 { which });
            }
        }
        if p == q {
            return Err(KeyError::Equal);
        }
        let n = &p * &q;
        let digits = n.to_str_radix(10).len();
        if digits > NUMBER_LEN {
            return Err(KeyError::TooLarge { digits });
        }
        let exp_p = (&p + 1u32) >> 2;
        let exp_q = (&q + 1u32) >> 2;
        Ok(QrcKey(Arc::new(KeyParts {
            p,
            q,
            n,
            exp_p,
            exp_q,
            crt: OnceLock::new(),
        })))
    }

    /// The quick primality test at start: one Fermat round for each
    /// prime, to the other prime as base. For a prime P, Q^(P−2) mod P is
    /// Q's inverse, which the square root needs anyway; so P's round costs
    /// one multiplication more, and Q's one exponentiation. A base of ±1
    /// modulo the number proves nothing (Q = 2P + 1 is a fine key); such a
    /// number gets one strong round to base 2 instead.
    ///
    /// The keys come from the administrator's own file, so the test
    /// guards against typos and wrong numbers, not a crafted number: a
    /// mistyped 100-digit number is a Fermat pseudoprime to such a base by
    /// a chance far below 1 in 10^20 (Carmichael numbers, which pass for
    /// every base, are rarer still), and a wrong key that did pass would
    /// still show as a refused login. `dhid -t` runs the full test
    /// (`QrcKey::full_check`).
    pub fn check(&self) -> Result<(), KeyError> {
        let (p, q) = (&self.0.p, &self.0.q);
        let (q_mod_p, p_mod_q) = (q % p, p % q);
        // They differ, so a multiple of the other is no prime.
        if q_mod_p.is_zero() {
            return Err(KeyError::NotPrime { which: 'Q' });
        }
        if p_mod_q.is_zero() {
            return Err(KeyError::NotPrime { which: 'P' });
        }

        let crt = self.crt();
        if !quick_round(p, &q_mod_p, || crt.q_inv_p.clone()) {
            return Err(KeyError::NotPrime { which: 'P' });
        }
        if !quick_round(q, &p_mod_q, || crt.mod_q.pow(p, &(q - 2u32))) {
            return Err(KeyError::NotPrime { which: 'Q' });
        }
        Ok(())
    }

    fn crt(&self) -> &Crt {
        self.0.crt.get_or_init(|| {
            let (p, q) = (&self.0.p, &self.0.q);
            // Both are odd: they are 3 mod 4.
            let mod_p = Modulus::new(p).expect("an odd modulus");
            let mod_q = Modulus::new(q).expect("an odd modulus");
            // Fermat: q^(p-2) is q's inverse mod the prime p.
            let q_inv_p = mod_p.pow(q, &(p - 2u32));
            Crt {
                mod_p,
                mod_q,
                q_inv_p,
            }
        })
    }

    /// The 40-round test of `is_probable_prime` on both primes, for
    /// `dhid -t`; loading a key makes only a quick one.
    pub fn full_check(&self) -> Result<(), KeyError> {
        for (which, x) in [('P', &self.0.p), ('Q', &self.0.q)] {
            if !is_probable_prime(x) {
                return Err(KeyError::NotPrime { which });
            }
        }
        Ok(())
    }

    pub fn modulus(&self) -> &BigUint {
        &self.0.n
    }

    /// The principal square root of `y` mod N, by CRT.
    pub fn principal_root(&self, y: &BigUint) -> BigUint {
        let crt = self.crt();
        let a = crt.mod_p.pow(y, &self.0.exp_p);
        let b = crt.mod_q.pow(y, &self.0.exp_q);

        // Garner: x = b + q·((a − b)·q⁻¹ mod p), which is < N.
        let diff = (&a + &self.0.p - (&b % &self.0.p)) % &self.0.p;
        let h = (diff * &crt.q_inv_p) % &self.0.p;
        b + h * &self.0.q
    }

    /// The AUTH_SX field answering an AUTH_SY field: exactly 200 digits.
    pub fn answer(&self, challenge: &Number) -> Number {
        let y = parse_challenge(challenge.digits()) % &self.0.n;
        to_number(&self.principal_root(&y))
    }
}

/// Read Y as dhisd writes it and the C client read it: leading blanks, then
/// digits up to the first other byte. An empty challenge reads as zero.
fn parse_challenge(field: &[u8]) -> BigUint {
    let start = field.iter().position(|b| *b != b' ').unwrap_or(field.len());
    let field = &field[start..];
    let end = field
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(field.len());
    BigUint::parse_bytes(&field[..end], 10).unwrap_or_default()
}

/// A number below 10^200 as 200 digits, zero-padded on the left.
pub fn to_number(x: &BigUint) -> Number {
    let digits = x.to_str_radix(10);
    assert!(
        digits.len() <= NUMBER_LEN,
        "QRC values are reduced mod N < 10^200"
    );
    let mut field = [b'0'; NUMBER_LEN];
    field[NUMBER_LEN - digits.len()..].copy_from_slice(digits.as_bytes());
    Number(field)
}

const SMALL_PRIMES: [u32; 24] = [
    2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89,
];

/// Miller-Rabin with 24 fixed prime bases and 16 more derived from `n`:
/// the test for keys dhid makes itself.
pub fn is_probable_prime(n: &BigUint) -> bool {
    miller_rabin(n, SMALL_PRIMES.len(), 16)
}

/// `QrcKey::check`'s round for `x`: Fermat's test to `base` (below `x`),
/// through `inverse`, which is base^(x−2) mod x: base's inverse when `x` is
/// prime. A base of ±1 proves nothing; `x` then gets a strong round to 2.
fn quick_round(x: &BigUint, base: &BigUint, inverse: impl FnOnce() -> BigUint) -> bool {
    if base.is_one() || base + 1u32 == *x {
        return miller_rabin(x, 1, 0);
    }
    (base * inverse()) % x == BigUint::one()
}

/// Trial division by `SMALL_PRIMES`: Some(false) for 0, 1 and multiples of
/// a small prime other than itself, Some(true) for a small prime, None
/// when it does not tell.
fn small_prime_verdict(n: &BigUint) -> Option<bool> {
    if let Some(small) = n.to_u32().filter(|&v| v < 2 || SMALL_PRIMES.contains(&v)) {
        return Some(small >= 2);
    }
    SMALL_PRIMES
        .iter()
        .any(|&p| (n % p).is_zero())
        .then_some(false)
}

/// True for 0, 1 and multiples of a small prime other than itself.
fn has_small_factor(n: &BigUint) -> bool {
    small_prime_verdict(n) == Some(false)
}

fn miller_rabin(n: &BigUint, fixed: usize, derived: usize) -> bool {
    if let Some(verdict) = small_prime_verdict(n) {
        return verdict;
    }

    let one = BigUint::one();
    let n_minus_1 = n - &one;
    let s = n_minus_1.trailing_zeros().expect("n is odd and above 2");
    let d = &n_minus_1 >> s;

    let mut seed = n.iter_u64_digits().next().unwrap_or(1);
    let derived = (0..derived).map(|_| {
        seed = splitmix64(seed);
        BigUint::from(seed) % (n - 3u32) + 2u32
    });
    let bases = SMALL_PRIMES[..fixed.min(SMALL_PRIMES.len())]
        .iter()
        .map(|&p| BigUint::from(p))
        .chain(derived);
    let modulus = Modulus::new(n).expect("n is odd and above 89");
    'bases: for a in bases {
        let mut x = modulus.pow(&a, &d);
        if x == one || x == n_minus_1 {
            continue;
        }
        for _ in 1..s {
            x = (&x * &x) % n;
            if x == n_minus_1 {
                continue 'bases;
            }
        }
        return false;
    }
    true
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A random prime of exactly `digits` decimal digits that is 3 mod 4.
/// `fill` supplies random bytes (the operating system's source in dhid).
pub fn random_prime_3mod4(digits: usize, fill: &mut dyn FnMut(&mut [u8])) -> BigUint {
    let low = BigUint::from(10u32).pow(digits as u32 - 1);
    let span = &low * 9u32;
    let mut bytes = vec![0; digits / 2 + 16];
    loop {
        fill(&mut bytes);
        let mut x = &low + BigUint::from_bytes_be(&bytes) % &span;
        let rem = (&x % 4u32).to_u32().expect("a remainder mod 4 fits");
        x += (7 - rem) % 4;
        // Walk up in steps of 4 from the random start: a 100-digit prime
        // 3 mod 4 turns up within a few hundred steps.
        for _ in 0..2000 {
            if x.to_str_radix(10).len() != digits {
                break;
            }
            if is_probable_prime(&x) {
                return x;
            }
            x += 4u32;
        }
    }
}

/// Format a number as dhid.conf or dhis.db lines of at most `width` digits.
pub fn split_lines(keyword: &str, value: &BigUint, width: usize, pad_to: usize) -> Vec<String> {
    let mut digits = value.to_str_radix(10);
    if digits.len() < pad_to {
        digits = format!("{}{digits}", "0".repeat(pad_to - digits.len()));
    }
    digits
        .as_bytes()
        .chunks(width)
        .map(|chunk| format!("{keyword} {}", String::from_utf8_lossy(chunk)))
        .collect()
}

impl QrcKey {
    pub fn p(&self) -> &BigUint {
        &self.0.p
    }

    pub fn q(&self) -> &BigUint {
        &self.0.q
    }

    /// True if `x` is even a square root of `y`; used by tests and the
    /// test server to check answers.
    pub fn is_root(&self, x: &BigUint, y: &BigUint) -> bool {
        (x * x) % &self.0.n == y % &self.0.n
    }
}

pub fn parse_number(field: &Number) -> BigUint {
    parse_challenge(field.digits())
}

/// Whether `x` is a quadratic residue mod the prime `p` (Euler's criterion).
pub fn is_residue(x: &BigUint, p: &BigUint) -> bool {
    let x = x % p;
    x.is_zero() || x.modpow(&((p - 1u32) >> 1), p).is_one()
}

#[cfg(test)]
mod tests {
    use super::*;
    use num_integer::Integer;

    // The keys of ../shared/tools/keys1.json, used in CAPTURES.md section 3.
    pub const P: &str = "15449893736667232178307889299179416633465749433683\
                         80824753093935890394130302442363034824844794389731";
    pub const Q: &str = "99435236198937884453866216967234063277242682229044\
                         05650918559261780062297024431052235518351362273691";

    #[test]
    fn small_primes_and_composites() {
        let primes = [2u32, 3, 7, 11, 97, 7919, 104729];
        for p in primes {
            assert!(is_probable_prime(&BigUint::from(p)), "{p}");
        }
        for c in [0u32, 1, 4, 9, 561, 1105, 7917, 104730] {
            assert!(!is_probable_prime(&BigUint::from(c)), "{c}");
        }
        // 3215031751 = 151·751·28351 is a strong pseudoprime to 2, 3, 5, 7.
        assert!(!is_probable_prime(&BigUint::from(3_215_031_751u64)));
    }

    #[test]
    fn key_validation_names_the_fault() {
        assert_eq!(QrcKey::from_decimal("7", "11").map(|_| ()), Ok(()));
        assert_eq!(
            QrcKey::from_decimal("13", "11"),
            Err(KeyError::Not3Mod4 { which: 'P' })
        );
        assert_eq!(
            QrcKey::from_decimal("7", "15"),
            Err(KeyError::NotPrime { which: 'Q' })
        );
        assert_eq!(QrcKey::from_decimal("7", "7"), Err(KeyError::Equal));
        assert_eq!(
            QrcKey::from_decimal("7a", "11"),
            Err(KeyError::NotDecimal { which: 'P' })
        );
        assert_eq!(
            QrcKey::from_decimal("", "11"),
            Err(KeyError::NotDecimal { which: 'P' })
        );
    }

    /// Each pair is refused, naming the composite one.
    fn assert_composite(pairs: &[(&str, &str, char)]) {
        for &(p, q, which) in pairs {
            assert_eq!(
                QrcKey::from_decimal(p, q),
                Err(KeyError::NotPrime { which }),
                "{p} {q}"
            );
        }
    }

    #[test]
    fn the_quick_test_catches_composites_without_small_factors() {
        // 42799 = 127 · 337, 3 mod 4; 1000003 is a prime, 3 mod 4.
        assert_composite(&[("42799", "1000003", 'P'), ("1000003", "42799", 'Q')]);
    }

    #[test]
    fn a_base_of_plus_or_minus_one_is_not_trusted() {
        // 10403 = 101 · 103; 41611 = 4 · 10403 − 1 and 20807 = 2 · 10403 + 1
        // are primes, 3 mod 4, and ±1 modulo 10403. Then a multiple of the
        // other number: the multiple is named.
        assert_composite(&[
            ("10403", "41611", 'P'),
            ("10403", "20807", 'P'),
            ("103", "10403", 'Q'),
            ("10403", "103", 'P'),
        ]);
        // A good pair with Q = 2P + 1: 1019 and 2039.
        let key = QrcKey::from_decimal("1019", "2039").unwrap();
        let y = BigUint::from(5u32).pow(2) % key.modulus();
        assert!(key.is_root(&key.principal_root(&y), &y));
    }

    #[test]
    fn a_carmichael_number_passes_the_quick_test_only() {
        // 139952671 = 131 · 571 · 1871 is a Carmichael number, 3 mod 4
        // and without a factor below 100: a Fermat pseudoprime to every
        // base prime to it.
        let key = QrcKey::from_decimal("139952671", "1000003").expect("the quick test passes it");
        assert_eq!(key.full_check(), Err(KeyError::NotPrime { which: 'P' }));
        let good = QrcKey::from_decimal("1000003", "42767").unwrap();
        assert_eq!(good.full_check(), Ok(()));
    }

    #[test]
    fn principal_root_is_a_residue_root() {
        let key = QrcKey::from_decimal("7", "11").unwrap();
        for x in 1u32..77 {
            let y = BigUint::from(x * x % 77);
            let r = key.principal_root(&y);
            if y.is_zero() || !y.gcd(key.modulus()).is_one() {
                continue;
            }
            assert!(key.is_root(&r, &y), "x={x}");
            assert!(is_residue(&r, key.p()) && is_residue(&r, key.q()), "x={x}");
        }
    }

    #[test]
    fn answer_is_exactly_200_digits() {
        let key = QrcKey::from_decimal("7", "11").unwrap();
        let mut challenge = [0u8; NUMBER_LEN];
        challenge[..2].copy_from_slice(b"16");
        let answer = key.answer(&Number(challenge));
        assert_eq!(answer.digits().len(), NUMBER_LEN);
        assert_eq!(parse_number(&answer), BigUint::from(4u32));
    }

    /// Deterministic bytes for tests (splitmix64), not for real keys.
    fn test_fill(seed: u64) -> impl FnMut(&mut [u8]) {
        let mut state = seed;
        move |buf: &mut [u8]| {
            for b in buf {
                state = splitmix64(state);
                *b = state as u8;
            }
        }
    }

    #[test]
    fn generated_keys_answer_random_challenges() {
        let mut fill = test_fill(7);
        let p = random_prime_3mod4(100, &mut fill);
        let q = random_prime_3mod4(100, &mut fill);
        assert_eq!(p.to_str_radix(10).len(), 100);
        assert_eq!(&p % 4u32, BigUint::from(3u32));
        let key = QrcKey::new(p.clone(), q.clone()).unwrap();

        for i in 0..20u64 {
            // The server's X is a square, so it is the principal root of Y.
            let mut bytes = [0u8; 90];
            test_fill(100 + i)(&mut bytes);
            let r = BigUint::from_bytes_be(&bytes) % key.modulus();
            let x = (&r * &r) % key.modulus();
            let y = (&x * &x) % key.modulus();
            let answer = key.answer(&to_number(&y));
            assert_eq!(answer.digits().len(), NUMBER_LEN);
            assert_eq!(parse_number(&answer), x, "challenge {i}");
        }
    }

    #[test]
    fn key_lines_are_split_and_padded() {
        let n = BigUint::from(12345u32);
        let lines = split_lines("AuthN", &n, 50, 200);
        assert_eq!(lines.len(), 4);
        assert!(lines.iter().all(|l| l.len() == "AuthN ".len() + 50));
        assert!(lines[3].ends_with("12345"));
    }

    #[test]
    fn capture_keys_are_valid() {
        assert!(QrcKey::from_decimal(P, Q).is_ok());
    }
}
