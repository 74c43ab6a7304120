//! Modular exponentiation for the QRC primes, in Montgomery form on 64-bit
//! limbs.
//!
//! num-bigint allocates for every product and reduces through general
//! division, about 50 µs for one exponentiation mod a 100-digit prime; the
//! square root needs two and the key check at start two. Here the
//! limbs live in buffers made once per exponentiation and each product is
//! reduced as it is formed, three to four times faster.
//!
//! The exponent is read in fixed 4-bit windows and every window multiplies,
//! also by one, so the sequence of operations does not follow the exponent's
//! bits (the exponent is (P+1)/4, the secret). The final conditional
//! subtraction of each product still depends on the data; num-bigint's
//! exponentiation, used before, was no more uniform.

use num_bigint::BigUint;

/// An odd modulus above 1 with its Montgomery constants, R = 2^(64·n).
pub struct Modulus {
    big: BigUint,
    m: Vec<u64>,
    /// −m⁻¹ mod 2^64.
    m_inv: u64,
    /// R² mod m, to bring numbers into Montgomery form.
    r2: Vec<u64>,
}

const WINDOW: u32 = 4;

impl Modulus {
    /// None for an even modulus or one below 3: Montgomery needs m odd.
    pub fn new(m: &BigUint) -> Option<Modulus> {
        if !m.bit(0) || m.bits() < 2 {
            return None;
        }
        let limbs = m.to_u64_digits();
        let n = limbs.len();

        // Newton's iteration doubles the correct low bits each step.
        let m0 = limbs[0];
        let mut inv: u64 = 1;
        for _ in 0..6 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(m0.wrapping_mul(inv)));
        }
        let r2 = (BigUint::from(1u32) << (128 * n)) % m;

        Some(Modulus {
            big: m.clone(),
            m: limbs,
            m_inv: inv.wrapping_neg(),
            r2: padded(&r2, n),
        })
    }

    /// base^exp mod m.
    pub fn pow(&self, base: &BigUint, exp: &BigUint) -> BigUint {
        let n = self.m.len();
        let mut scratch = vec![0u64; n + 2];
        let mut one = vec![0u64; n];
        one[0] = 1;

        // table[i] = base^i in Montgomery form; table[0] is R mod m.
        let base = padded(&(base % &self.big), n);
        let mut table = vec![0u64; n << WINDOW];
        let mut x = vec![0u64; n];
        self.mul(&one, &self.r2, &mut x, &mut scratch);
        table[..n].copy_from_slice(&x);
        self.mul(&base, &self.r2, &mut x, &mut scratch);
        table[n..2 * n].copy_from_slice(&x);
        for i in 2..1 << WINDOW {
            let (done, rest) = table.split_at_mut(i * n);
            self.mul(
                &done[(i - 1) * n..],
                &done[n..2 * n],
                &mut rest[..n],
                &mut scratch,
            );
        }

        let mut acc = table[..n].to_vec();
        let mut tmp = vec![0u64; n];
        let windows = exp.bits().div_ceil(WINDOW.into());
        for w in (0..windows).rev() {
            for _ in 0..WINDOW {
                self.mul(&acc, &acc, &mut tmp, &mut scratch);
                std::mem::swap(&mut acc, &mut tmp);
            }
            let digit = window(exp, w * u64::from(WINDOW));
            self.mul(
                &acc,
                &table[digit * n..(digit + 1) * n],
                &mut tmp,
                &mut scratch,
            );
            std::mem::swap(&mut acc, &mut tmp);
        }

        // Out of Montgomery form: multiply by 1.
        self.mul(&acc, &one, &mut tmp, &mut scratch);
        BigUint::from_slice(&to_u32(&tmp))
    }

    /// out = a·b·R⁻¹ mod m for a, b < m, multiplying and reducing in the
    /// same pass over the limbs (FIOS): the two carry chains are
    /// independent, so the processor overlaps them. `t` is scratch of
    /// n + 2 limbs.
    fn mul(&self, a: &[u64], b: &[u64], out: &mut [u64], t: &mut [u64]) {
        let n = self.m.len();
        let (m, a, b, t, out) = (
            &self.m[..n],
            &a[..n],
            &b[..n],
            &mut t[..n + 2],
            &mut out[..n],
        );
        t.fill(0);

        for &ai in a {
            // The multiple of m that clears the lowest limb of t + ai·b.
            let low = t[0].wrapping_add(ai.wrapping_mul(b[0]));
            let q = low.wrapping_mul(self.m_inv);

            let s = u128::from(t[0]) + u128::from(ai) * u128::from(b[0]);
            let mut c1 = (s >> 64) as u64;
            let r = u128::from(s as u64) + u128::from(q) * u128::from(m[0]);
            let mut c2 = (r >> 64) as u64;
            for j in 1..n {
                let s = u128::from(t[j]) + u128::from(ai) * u128::from(b[j]) + u128::from(c1);
                c1 = (s >> 64) as u64;
                let r = u128::from(s as u64) + u128::from(q) * u128::from(m[j]) + u128::from(c2);
                c2 = (r >> 64) as u64;
                t[j - 1] = r as u64;
            }
            let s = u128::from(t[n]) + u128::from(c1) + u128::from(c2);
            t[n - 1] = s as u64;
            t[n] = t[n + 1] + (s >> 64) as u64;
            t[n + 1] = 0;
        }

        // The result is below 2m: one subtraction at most.
        if t[n] != 0 || !less(&t[..n], m) {
            let mut borrow = false;
            for j in 0..n {
                let (d, b1) = t[j].overflowing_sub(m[j]);
                let (d, b2) = d.overflowing_sub(u64::from(borrow));
                out[j] = d;
                borrow = b1 || b2;
            }
        } else {
            out.copy_from_slice(&t[..n]);
        }
    }
}

/// The `WINDOW` bits of `exp` starting at bit `at`.
fn window(exp: &BigUint, at: u64) -> usize {
    (0..u64::from(WINDOW))
        .rev()
        .fold(0, |acc, i| (acc << 1) | usize::from(exp.bit(at + i)))
}

fn less(a: &[u64], b: &[u64]) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x < y;
        }
    }
    false
}

fn padded(x: &BigUint, n: usize) -> Vec<u64> {
    let mut limbs = x.to_u64_digits();
    limbs.resize(n, 0);
    limbs
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
        for limbs in 1..=9 {
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
