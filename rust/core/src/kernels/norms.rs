//! Norms and counts over flat buffers, for gradient clipping and training
//! diagnostics. Sums are taken over fixed chunks of [`NORM_CHUNK`] elements
//! (each in float64, eight lanes added in a fixed order), and the chunks'
//! partial sums are added in chunk order, so a result has the same bits
//! whatever the thread count. Maxima and counts are exact in any order.

use super::{par_chunks, par_chunks2, par_elems, workers_for, PAR_MIN_WORK};
use crate::float::Float;

/// Elements per partial sum.
pub const NORM_CHUNK: usize = 1 << 13;

/// The partial `f(start, end)` of every chunk of `0..n`, in parallel when
/// `n` is large, in `buf` (grown when too short; no allocation otherwise).
fn partials<S: Copy + Default + Send>(
    n: usize,
    buf: &mut Vec<S>,
    f: impl Fn(usize, usize) -> S + Sync + Send,
) -> &[S] {
    let count = n.div_ceil(NORM_CHUNK);
    if buf.len() < count {
        buf.resize(count, S::default());
    }
    let out = &mut buf[..count];
    let range = |i: usize| (i * NORM_CHUNK, ((i + 1) * NORM_CHUNK).min(n));
    let (threads, min_work) = workers_for(PAR_MIN_WORK);
    if threads <= 1 || count <= 1 || n < min_work {
        for (i, o) in out.iter_mut().enumerate() {
            let (s, e) = range(i);
            *o = f(s, e);
        }
    } else {
        par_chunks(out, 1, |i, o| {
            let (s, e) = range(i);
            o[0] = f(s, e);
        });
    }
    out
}

/// Sum of `f(x)` over a slice: eight float64 lanes, then the lanes in order.
#[inline(always)]
fn lanes<T: Float>(x: &[T], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for k in 0..8 {
            acc[k] += f(c[k].to_f64());
        }
    }
    let mut tail = 0.0;
    for &v in it.remainder() {
        tail += f(v.to_f64());
    }
    acc.iter().sum::<f64>() + tail
}

crate::multiversion! {
fn sumsq_into<T: Float>(x: &[T], out: &mut f64) {
    *out = lanes(x, |v| v * v);
}
}

crate::multiversion! {
fn sumabs_into<T: Float>(x: &[T], out: &mut f64) {
    *out = lanes(x, f64::abs);
}
}

crate::multiversion! {
fn maxabs_into<T: Float>(x: &[T], out: &mut f64) {
    // NaN propagates (as torch's max-norm): `!(a >= m)` holds for a NaN.
    let mut m = 0.0f64;
    for &v in x {
        let a = v.to_f64().abs();
        if a > m || a.is_nan() {
            m = a;
        }
        if m.is_nan() {
            break;
        }
    }
    *out = m;
}
}

fn sumsq<T: Float>(x: &[T]) -> f64 {
    let mut s = 0.0;
    sumsq_into(x, &mut s);
    s
}

/// The `p`-norm of `x` (`p > 0`, or infinity for the largest magnitude), as
/// `torch.linalg.vector_norm` defines it, accumulated in float64.
/// `buf` holds the chunks' partial results.
pub fn vector_norm<T: Float>(x: &[T], p: f64, buf: &mut Vec<f64>) -> f64 {
    if p == f64::INFINITY {
        let parts = partials(x.len(), buf, |s, e| {
            let mut m = 0.0;
            maxabs_into(&x[s..e], &mut m);
            m
        });
        return parts.iter().fold(0.0f64, |m, &v| if m.is_nan() || v <= m { m } else { v });
    }
    let parts = partials(x.len(), buf, |s, e| {
        let c = &x[s..e];
        let mut v = 0.0;
        if p == 2.0 {
            sumsq_into(c, &mut v);
        } else if p == 1.0 {
            sumabs_into(c, &mut v);
        } else {
            v = c.iter().map(|v| v.to_f64().abs().powf(p)).sum();
        }
        v
    });
    let total: f64 = parts.iter().sum();
    if p == 2.0 {
        total.sqrt()
    } else if p == 1.0 {
        total
    } else {
        total.powf(1.0 / p)
    }
}

/// The `p`-norm of a few values (e.g. per-parameter norms), in order.
pub fn norm_of(values: &[f64], p: f64) -> f64 {
    if p == f64::INFINITY {
        return values.iter().fold(0.0f64, |m, &v| if m.is_nan() || v.abs() <= m { m } else { v.abs() });
    }
    if p == 2.0 {
        return values.iter().map(|v| v * v).sum::<f64>().sqrt();
    }
    if p == 1.0 {
        return values.iter().map(|v| v.abs()).sum();
    }
    values.iter().map(|v| v.abs().powf(p)).sum::<f64>().powf(1.0 / p)
}

/// `x *= c`, in parallel when large.
pub fn scale<T: Float>(x: &mut [T], c: T) {
    par_elems(x, 1, |_, part| part.iter_mut().for_each(|v| *v *= c));
}

/// `(sum g^2, sum w^2)`, copying `w` into `prev`; `g`, `w` and `prev`
/// have the same length.
pub fn sumsq_pair_copy<T: Float>(g: &[T], w: &[T], prev: &mut [T], buf: &mut Vec<[f64; 2]>) -> (f64, f64) {
    debug_assert!(g.len() == w.len() && prev.len() == w.len());
    let n = w.len();
    let count = n.div_ceil(NORM_CHUNK);
    if buf.len() < count {
        buf.resize(count, [0.0; 2]);
    }
    let out = &mut buf[..count];
    let one = |i: usize, p: &mut [T], o: &mut [[f64; 2]]| {
        let (s, e) = (i * NORM_CHUNK, ((i + 1) * NORM_CHUNK).min(n));
        p.copy_from_slice(&w[s..e]);
        o[0] = [sumsq(&g[s..e]), sumsq(&w[s..e])];
    };
    if n < workers_for(PAR_MIN_WORK).1 {
        for (i, (p, o)) in prev.chunks_mut(NORM_CHUNK).zip(out.chunks_mut(1)).enumerate() {
            one(i, p, o);
        }
    } else {
        par_chunks2(prev, NORM_CHUNK, out, 1, one);
    }
    out.iter().fold((0.0, 0.0), |(a, b), v| (a + v[0], b + v[1]))
}

crate::multiversion! {
fn diffsq_into<T: Float>(a: &[T], b: &[T], out: &mut f64) {
    let mut acc = [0.0f64; 8];
    let (mut ia, mut ib) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ia).zip(&mut ib) {
        for k in 0..8 {
            let d = x[k].to_f64() - y[k].to_f64();
            acc[k] += d * d;
        }
    }
    let mut tail = 0.0;
    for (&x, &y) in ia.remainder().iter().zip(ib.remainder()) {
        let d = x.to_f64() - y.to_f64();
        tail += d * d;
    }
    *out = acc.iter().sum::<f64>() + tail;
}
}

/// `sum (a - b)^2` over two slices of the same length.
pub fn diff_sumsq<T: Float>(a: &[T], b: &[T], buf: &mut Vec<f64>) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    let parts = partials(a.len(), buf, |s, e| {
        let mut v = 0.0;
        diffsq_into(&a[s..e], &b[s..e], &mut v);
        v
    });
    parts.iter().sum()
}

/// Per unit, the largest value: `y` is `rows x units x inner` (row-major),
/// and `out[u]` becomes the maximum of `y[r, u, k]` over `r` and `k`
/// (a NaN makes the result for its unit unspecified, not an error).
pub fn unit_max<T: Float>(y: &[T], rows: usize, units: usize, inner: usize, out: &mut [T]) {
    debug_assert!(y.len() >= rows * units * inner && out.len() == units);
    par_elems(out, rows * inner, |u0, acc| {
        acc.fill(T::from_f64(f64::NEG_INFINITY));
        let u1 = u0 + acc.len();
        for r in 0..rows {
            let row = &y[(r * units + u0) * inner..(r * units + u1) * inner];
            if inner == 1 {
                for (a, &v) in acc.iter_mut().zip(row) {
                    *a = a.max(v);
                }
            } else {
                for (a, plane) in acc.iter_mut().zip(row.chunks_exact(inner)) {
                    *a = plane.iter().fold(*a, |m, &v| m.max(v));
                }
            }
        }
    });
}

/// How many elements of `y` lie outside `[lo, hi]` (NaNs count as outside).
pub fn count_outside<T: Float>(y: &[T], lo: f64, hi: f64, buf: &mut Vec<f64>) -> usize {
    let (lo, hi) = (T::from_f64(lo), T::from_f64(hi));
    let parts =
        partials(y.len(), buf, |s, e| y[s..e].iter().filter(|&&v| !(v >= lo && v <= hi)).count() as f64);
    parts.iter().sum::<f64>() as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::team;

    fn data(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect()
    }

    #[test]
    fn norms_match_plain_sums_and_thread_counts() {
        for n in [0usize, 5, 8, 9000, 100_003] {
            let x = data(n);
            let mut buf = Vec::new();
            for p in [1.0, 2.0, 3.0, f64::INFINITY] {
                let want = if p == f64::INFINITY {
                    x.iter().map(|v| v.abs() as f64).fold(0.0, f64::max)
                } else {
                    x.iter().map(|v| (v.abs() as f64).powf(p)).sum::<f64>().powf(1.0 / p)
                };
                let got = vector_norm(&x, p, &mut buf);
                assert!((got - want).abs() <= 1e-12 * want.max(1.0), "n={n} p={p}: {got} vs {want}");
                // The same bits on one thread, on a rayon pool and on a team.
                let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
                let serial = one.install(|| vector_norm(&x, p, &mut Vec::new()));
                let teamed = team::with_team(3, || vector_norm(&x, p, &mut Vec::new()));
                assert_eq!(got.to_bits(), serial.to_bits());
                assert_eq!(got.to_bits(), teamed.to_bits());
            }
        }
    }

    #[test]
    fn inf_norm_propagates_nan() {
        let mut x = data(20_000);
        x[12_345] = f32::NAN;
        assert!(vector_norm(&x, f64::INFINITY, &mut Vec::new()).is_nan());
        assert!(vector_norm(&x, 2.0, &mut Vec::new()).is_nan());
        assert!(norm_of(&[1.0, f64::NAN, 2.0], f64::INFINITY).is_nan());
    }

    #[test]
    fn pair_copy_and_diff() {
        let n = 70_001;
        let w = data(n);
        let g: Vec<f32> = w.iter().map(|v| v * 0.5 + 1.0).collect();
        let mut prev = vec![0.0f32; n];
        let (gs, ws) = sumsq_pair_copy(&g, &w, &mut prev, &mut Vec::new());
        assert_eq!(prev, w);
        let want_g: f64 = g.iter().map(|&v| (v as f64).powi(2)).sum();
        let want_w: f64 = w.iter().map(|&v| (v as f64).powi(2)).sum();
        assert!((gs - want_g).abs() < 1e-9 * want_g && (ws - want_w).abs() < 1e-9 * want_w);
        let d = diff_sumsq(&g, &w, &mut Vec::new());
        let want: f64 = g.iter().zip(&w).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
        assert!((d - want).abs() < 1e-9 * want);
    }

    #[test]
    fn unit_max_and_counts() {
        // 3 rows x 4 units x 2 inner.
        let y: Vec<f64> = vec![
            0., 0., 1., 0., 0., 0., 0., 0., //
            0., 0., 0., 2., 0., 0., 0., 0., //
            0., 0., 0., 0., 0., 0., 0., 5., //
        ];
        let mut out = vec![0.0; 4];
        unit_max(&y, 3, 4, 2, &mut out);
        assert_eq!(out, vec![0.0, 2.0, 0.0, 5.0]);
        let mut out = vec![0.0; 8];
        unit_max(&y, 3, 8, 1, &mut out);
        assert_eq!(out, vec![0.0, 0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 5.0]);
        assert_eq!(count_outside(&y, -0.5, 1.5, &mut Vec::new()), 2);
        assert_eq!(count_outside(&[f32::NAN, 0.5], 0.0, 1.0, &mut Vec::new()), 1);
    }
}
