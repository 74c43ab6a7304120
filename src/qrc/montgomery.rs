//! Modular exponentiation for the QRC primes, in Montgomery form on 64-bit
//! limbs.
//!
//! num-bigint allocates for every product and reduces through general
//! division, about 50 µs for one exponentiation mod a 100-digit prime; the
//! square root needs two and the key check at start two. Here each product
//! is reduced as it is formed, on fixed-size arrays: the limb count is a
//! const generic, rounded up to one of a few sizes (a 100-digit prime has
//! 6 limbs), so the compiler unrolls the inner loop and keeps the running
//! sum in registers. Moduli of more than `MAX_LIMBS` limbs go through
//! num-bigint; the protocol's 200-digit limit keeps the primes below that.
//!
//! The exponent is read in fixed 4-bit windows and every window multiplies,
//! also by one, so the sequence of operations does not follow the exponent's
//! bits (the exponent is (P+1)/4, the secret), and each product's final
//! subtraction is chosen by a mask, not a branch. Which table entry a window
//! reads still depends on the secret: a process sharing the CPU's cache
//! could in principle time it.

use num_bigint::BigUint;

/// An odd modulus above 1 with its Montgomery constants, R = 2^(64·L) for
/// the padded limb count L.
pub struct Modulus {
    big: BigUint,
    /// The limbs, padded with zeros to a size `pow` has code for; empty
    /// when the modulus is too large for that and num-bigint does the work.
    m: Vec<u64>,
    /// −m⁻¹ mod 2^64.
    m_inv: u64,
    /// R² mod m, to bring numbers into Montgomery form.
    r2: Vec<u64>,
}

const WINDOW: u32 = 4;

/// The largest padded size; 11 limbs hold any prime of a 200-digit key.
const MAX_LIMBS: usize = 12;

/// The padded size for `n` limbs: few sizes, so few copies of the code.
fn padded_len(n: usize) -> Option<usize> {
    [2, 4, 6, 8, MAX_LIMBS].into_iter().find(|&size| n <= size)
}

impl Modulus {
    /// None for an even modulus or one below 3: Montgomery needs m odd.
    pub fn new(m: &BigUint) -> Option<Modulus> {
        if !m.bit(0) || m.bits() < 2 {
            return None;
        }
        let mut limbs = m.to_u64_digits();
        let Some(size) = padded_len(limbs.len()) else {
            return Some(Modulus {
                big: m.clone(),
                m: Vec::new(),
                m_inv: 0,
                r2: Vec::new(),
            });
        };

        // Newton's iteration doubles the correct low bits each step.
        let m0 = limbs[0];
        let mut inv: u64 = 1;
        for _ in 0..6 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(m0.wrapping_mul(inv)));
        }
        let mut r2 = ((BigUint::from(1u32) << (128 * size)) % m).to_u64_digits();
        limbs.resize(size, 0);
        r2.resize(size, 0);

        Some(Modulus {
            big: m.clone(),
            m: limbs,
            m_inv: inv.wrapping_neg(),
            r2,
        })
    }

    /// base^exp mod m.
    pub fn pow(&self, base: &BigUint, exp: &BigUint) -> BigUint {
        let base = base % &self.big;
        match self.m.len() {
            2 => self.pow_n::<2>(&base, exp),
            4 => self.pow_n::<4>(&base, exp),
            6 => self.pow_n::<6>(&base, exp),
            8 => self.pow_n::<8>(&base, exp),
            MAX_LIMBS => self.pow_n::<MAX_LIMBS>(&base, exp),
            _ => base.modpow(exp, &self.big),
        }
    }

    fn pow_n<const N: usize>(&self, base: &BigUint, exp: &BigUint) -> BigUint {
        let m: &[u64; N] = self.m[..].try_into().expect("m padded to N limbs");
        let r2: &[u64; N] = self.r2[..].try_into().expect("r2 padded to N limbs");
        let mul = |a: &[u64; N], b: &[u64; N]| mul(m, self.m_inv, a, b);
        let mut one = [0u64; N];
        one[0] = 1;
        let mut b = [0u64; N];
        for (limb, digit) in b.iter_mut().zip(base.iter_u64_digits()) {
            *limb = digit;
        }

        // table[i] = base^i in Montgomery form; table[0] is R mod m.
        let mut table = [[0u64; N]; 1 << WINDOW];
        table[0] = mul(&one, r2);
        table[1] = mul(&b, r2);
        for i in 2..table.len() {
            table[i] = mul(&table[i - 1], &table[1]);
        }

        let windows = exp.bits().div_ceil(u64::from(WINDOW));
        let exp = exp.to_u64_digits();
        let mut acc = table[0];
        for w in (0..windows).rev() {
            for _ in 0..WINDOW {
                acc = mul(&acc, &acc);
            }
            acc = mul(&acc, &table[window(&exp, w * u64::from(WINDOW))]);
        }

        // Out of Montgomery form: multiply by 1.
        BigUint::from_slice(&to_u32(&mul(&acc, &one)))
    }
}

/// a·b·R⁻¹ mod m for a, b < m, multiplying and reducing in the same pass
/// over the limbs (FIOS): the two carry chains are independent, so the
/// processor overlaps them.
#[inline]
fn mul<const N: usize>(m: &[u64; N], m_inv: u64, a: &[u64; N], b: &[u64; N]) -> [u64; N] {
    let mut t = [0u64; N];
    // The limb above t; the sum stays below 2m < 2R, so one bit.
    let mut top = 0u64;

    for &ai in a {
        // The multiple of m that clears the lowest limb of t + ai·b.
        let s = u128::from(t[0]) + u128::from(ai) * u128::from(b[0]);
        let q = (s as u64).wrapping_mul(m_inv);
        let mut c1 = (s >> 64) as u64;
        let r = u128::from(s as u64) + u128::from(q) * u128::from(m[0]);
        let mut c2 = (r >> 64) as u64;
        for j in 1..N {
            let s = u128::from(t[j]) + u128::from(ai) * u128::from(b[j]) + u128::from(c1);
            c1 = (s >> 64) as u64;
            let r = u128::from(s as u64) + u128::from(q) * u128::from(m[j]) + u128::from(c2);
            c2 = (r >> 64) as u64;
            t[j - 1] = r as u64;
        }
        let s = u128::from(top) + u128::from(c1) + u128::from(c2);
        t[N - 1] = s as u64;
        top = (s >> 64) as u64;
    }

    // The result is below 2m: subtract m once unless t is already below it.
    let mut d = [0u64; N];
    let mut borrow = 0u64;
    for j in 0..N {
        let (x, b1) = t[j].overflowing_sub(m[j]);
        let (x, b2) = x.overflowing_sub(borrow);
        d[j] = x;
        borrow = u64::from(b1 | b2);
    }
    // All ones when t (with its top bit) is below m. Hidden from the
    // optimiser, which otherwise turns the mask back into a branch on it.
    let keep = std::hint::black_box(((top ^ 1) & borrow).wrapping_neg());
    for j in 0..N {
        d[j] = (t[j] & keep) | (d[j] & !keep);
    }
    d
}

/// The `WINDOW` bits of `exp` (limbs, lowest first) starting at bit `at`,
/// a multiple of `WINDOW`, so they never straddle two limbs.
fn window(exp: &[u64], at: u64) -> usize {
    let limb = exp[(at / 64) as usize];
    ((limb >> (at % 64)) & ((1 << WINDOW) - 1)) as usize
}

fn to_u32(limbs: &[u64]) -> Vec<u32> {
    limbs
        .iter()
        .flat_map(|l| [*l as u32, (*l >> 32) as u32])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next(state: &mut u64) -> u64 {
        *state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        *state ^ (*state >> 29)
    }

    fn random(state: &mut u64, limbs: usize) -> BigUint {
        let digits: Vec<u64> = (0..limbs).map(|_| next(state)).collect();
        let mut x = BigUint::ZERO;
        for d in digits.iter().rev() {
            x = (x << 64) + *d;
        }
        x
    }

    #[test]
    fn agrees_with_num_bigint() {
        let mut state = 7;
        for limbs in 1..=14 {
            for _ in 0..20 {
                let m = random(&mut state, limbs) | BigUint::from(1u32);
                if m.bits() < 2 {
                    continue;
                }
                let modulus = Modulus::new(&m).expect("odd");
                let base = random(&mut state, limbs + 1);
                let exp = random(&mut state, limbs);
                assert_eq!(modulus.pow(&base, &exp), base.modpow(&exp, &m), "{m}");
            }
        }
    }

    #[test]
    fn edge_exponents_and_bases() {
        let m = (BigUint::from(u64::MAX) * BigUint::from(u64::MAX - 2)) | BigUint::from(1u32);
        let modulus = Modulus::new(&m).unwrap();
        let big = &m - 1u32;
        for base in [BigUint::ZERO, BigUint::from(1u32), big.clone(), &m + 5u32] {
            for exp in [
                BigUint::ZERO,
                BigUint::from(1u32),
                BigUint::from(16u32),
                big.clone(),
            ] {
                assert_eq!(modulus.pow(&base, &exp), base.modpow(&exp, &m));
            }
        }
    }

    #[test]
    fn even_or_tiny_moduli_are_refused() {
        for m in [0u32, 1, 2, 10] {
            assert!(Modulus::new(&BigUint::from(m)).is_none(), "{m}");
        }
        assert!(Modulus::new(&BigUint::from(3u32)).is_some());
    }
}
