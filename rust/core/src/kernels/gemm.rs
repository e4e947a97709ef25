//! Matrix products on row-major buffers, split across threads by output
//! rows or by the gemm crate itself (see [`plan`]).

use super::{chunk_count_for, for_row_chunks, GEMM_PAR_MIN_FLOPS};
use crate::float::Float;

/// `C[m,n] = alpha * op(A) * op(B) + beta * C` for contiguous row-major
/// buffers. `op(A)` is `m x k`: `A` is stored `m x k`, or `k x m` when
/// `trans_a`. `op(B)` is `k x n`: `B` is stored `k x n`, or `n x k` when
/// `trans_b`. With `beta == 0`, `C` is overwritten (NaNs in it are ignored).
///
/// The work is split across threads as [`plan`] decides; each element's
/// reduction over `k` is the same whatever the thread count.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Float>(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: &[T],
    b: &[T],
    beta: T,
    c: &mut [T],
) {
    let ldb = if trans_b { k } else { n };
    gemm_ldb(trans_a, trans_b, m, n, k, alpha, a, b, ldb, beta, c)
}

/// [`gemm()`] with an explicit row stride `ldb` for `B` (`ldb >= k` when
/// `trans_b`, else `ldb >= n`), e.g. a weight copied by [`pad_rows`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_ldb<T: Float>(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: &[T],
    b: &[T],
    ldb: usize,
    beta: T,
    c: &mut [T],
) {
    let p = Product::new(trans_a, trans_b, m, n, k, alpha, a, b, ldb, beta);
    let mn = elements("gemm: C", m, n);
    assert!(c.len() >= mn, "gemm: C has {} elements, needs {mn}", c.len());
    if m == 0 || n == 0 {
        return;
    }
    let c = &mut c[..mn];
    match plan(m, n, k) {
        Split::Crate(threads) => p.rows(0, c, threads),
        Split::Rows(rows_per) => for_row_chunks(c, n, rows_per, |row0, cc| p.rows(row0, cc, 1)),
        Split::Cols(cols_per) => p.cols(c, cols_per),
    }
}

/// The operands of one product `C = alpha * op(A) * op(B) + beta * C` (see
/// [`gemm()`]; `B`'s rows lie `ldb` apart), checked once, computed in pieces.
#[derive(Clone, Copy)]
struct Product<'a, T> {
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: &'a [T],
    b: &'a [T],
    ldb: usize,
    beta: T,
}

impl<'a, T: Float> Product<'a, T> {
    /// Panics unless `a` holds op(A) (`m x k`) and `b` holds op(B) (`k x n`)
    /// with row stride `ldb`: `n` rows of `k` when `trans_b`, else `k` rows
    /// of `n`. The sizes are computed with checked arithmetic (a product
    /// that overflows is refused, never wrapped into a small one), and the
    /// strides handed to the gemm crate as `isize` are checked to fit.
    #[allow(clippy::too_many_arguments)]
    fn new(
        trans_a: bool,
        trans_b: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: T,
        a: &'a [T],
        b: &'a [T],
        ldb: usize,
        beta: T,
    ) -> Self {
        let mk = elements("gemm: A", m, k);
        assert!(a.len() >= mk, "gemm: A has {} elements, needs {mk}", a.len());
        let (rows, cols) = if trans_b { (n, k) } else { (k, n) };
        assert!(ldb >= cols, "gemm: ldb = {ldb} is less than B's {cols} columns");
        let need = if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1)
                .checked_mul(ldb)
                .and_then(|v| v.checked_add(cols))
                .unwrap_or_else(|| panic!("gemm: B's size ({rows} rows {ldb} apart) overflows usize"))
        };
        assert!(b.len() >= need, "gemm: B has {} elements, needs {need}", b.len());
        // Strides reach the gemm crate as `isize`: `m` and `k` (A's), `ldb`
        // (B's) and `n` (C's) must fit. A non-empty A or B bounds them by
        // its length (at most `isize::MAX`); check them all the same.
        for (what, v) in [("m", m), ("k", k), ("n", n), ("ldb", ldb)] {
            assert!(isize::try_from(v).is_ok(), "gemm: {what} = {v} exceeds isize::MAX");
        }
        Product { trans_a, trans_b, m, n, k, alpha, a, b, ldb, beta }
    }

    /// Rows `row0 .. row0 + cc.len() / n` of `C` into `cc`, by the gemm
    /// crate on `threads` workers of the current pool (1: this thread).
    fn rows(&self, row0: usize, cc: &mut [T], threads: usize) {
        let n = self.n;
        let rows = cc.len() / n.max(1);
        assert!(
            row0.checked_add(rows).is_some_and(|end| end <= self.m),
            "gemm_rows: rows {row0}.. (+{rows}) beyond m = {}",
            self.m
        );
        if rows == 0 || n == 0 {
            return;
        }
        if self.k == 0 {
            if self.beta == T::ZERO {
                cc.fill(T::ZERO);
            } else {
                cc.iter_mut().for_each(|v| *v *= self.beta);
            }
            return;
        }
        // SAFETY: `cc` is an exclusive `rows x n` chunk of C holding rows
        // `row0 ..` (checked above), so it cannot alias A or B.
        unsafe { self.block(row0, rows, 0, n, cc.as_mut_ptr(), threads) }
    }

    /// [`Split::Cols`]: blocks of `cols_per` columns of the whole `m x n`
    /// `c`, each one call to the gemm crate, spread over the team or pool
    /// when worth it.
    fn cols(&self, c: &mut [T], cols_per: usize) {
        let (m, n, k) = (self.m, self.n, self.k);
        assert!(c.len() >= elements("gemm: C", m, n), "gemm_cols: C too short");
        if k == 0 {
            return self.rows(0, &mut c[..m * n], 1);
        }
        let cols_per = cols_per.max(1);
        let blocks = n.div_ceil(cols_per);
        let cp = super::team::SlicePtr::new(c);
        let block = |i: usize| {
            let j0 = i * cols_per;
            // SAFETY: block `i` is columns `j0 .. j0 + cols` of the `m x n` C
            // that `cp` points to; each block index runs once, so the blocks
            // written are disjoint, and `c` stays mutably borrowed (so
            // unaliased by A and B) until this function returns.
            unsafe { self.block(0, m, j0, cols_per.min(n - j0), cp.as_mut_ptr().add(j0), 1) }
        };
        let flops = m.saturating_mul(n).saturating_mul(k).saturating_mul(2);
        let (threads, min_work) = super::workers_for(GEMM_PAR_MIN_FLOPS);
        if threads <= 1 || blocks <= 1 || flops < min_work {
            (0..blocks).for_each(block);
        } else {
            super::team::with_current(|t| match t {
                Some(t) => t.for_each_index(blocks, block),
                None => {
                    use rayon::prelude::*;
                    (0..blocks).into_par_iter().for_each(block)
                }
            })
        }
    }

    /// The `rows x cols` block of `C` at row `row0`, column `j0`, written
    /// through `c` (its first element; rows `n` apart), with `k > 0`.
    ///
    /// # Safety
    /// `row0 + rows <= m`, `j0 + cols <= n`, and `c` must point to that block
    /// of a live `m x n` C (rows `n` apart) that nothing else reads or writes
    /// meanwhile and that does not overlap A or B.
    unsafe fn block(&self, row0: usize, rows: usize, j0: usize, cols: usize, c: *mut T, threads: usize) {
        let (m, k, ldb) = (self.m, self.k, self.ldb);
        // A's view from row `row0` of op(A), B's from column `j0` of op(B).
        let (a_off, rsa, csa) =
            if self.trans_a { (row0, 1isize, m as isize) } else { (row0 * k, k as isize, 1isize) };
        let (b_off, rsb, csb) =
            if self.trans_b { (j0 * ldb, 1isize, ldb as isize) } else { (j0, ldb as isize, 1isize) };
        // SAFETY: with `row0 + rows <= m`, A's view ends within the `m x k`
        // elements `new` checked; with `j0 + cols <= n`, B's within the
        // extent `new` checked; the caller vouches for C.
        unsafe {
            T::gemm_raw(
                rows,
                k,
                cols,
                self.alpha,
                self.a.as_ptr().add(a_off),
                rsa,
                csa,
                self.b.as_ptr().add(b_off),
                rsb,
                csb,
                self.beta,
                c,
                self.n as isize,
                1,
                threads,
            );
        }
    }
}

/// `rows * cols`, the elements of the matrix `what`; panics (naming it)
/// when the product overflows `usize`.
fn elements(what: &str, rows: usize, cols: usize) -> usize {
    rows.checked_mul(cols).unwrap_or_else(|| panic!("{what}: {rows} x {cols} elements overflow usize"))
}

/// A row stride to copy a row-major matrix with `k` columns into, when `k`
/// itself is a bad one: rows a multiple of 1 KiB apart map to the same
/// cache sets, and the gemm crate's packing of a transposed `B` (`n x k`,
/// read down its columns) then misses on nearly every load. The large MLP's
/// `256 x 1024 x 1024` forward product ran at 65 GFLOPS with `ldb = 1024`
/// and 101 with `ldb = 1040` on one thread (179 vs 104 on two); `k = 256,
/// 512, 768, 1536, 2048` showed the same, `k = 640` or `1000` did not.
/// `None` when `k` is fine as it is.
#[inline]
pub fn padded_ld<T>(k: usize) -> Option<usize> {
    let size = std::mem::size_of::<T>().max(1);
    let bytes = k.checked_mul(size)?;
    (k > 0 && bytes.is_multiple_of(1024)).then(|| k.checked_add(64 / size)).flatten()
}

/// Copies the `rows x k` row-major matrix `src` into `dst` with row stride
/// `ld >= k`, in parallel when large (what lies between rows is left as it
/// is: [`gemm_ldb`] never reads it).
pub fn pad_rows<T: Float>(src: &[T], rows: usize, k: usize, ld: usize, dst: &mut [T]) {
    let (src_len, dst_len) =
        (elements("pad_rows: source", rows, k), elements("pad_rows: destination", rows, ld));
    assert!(ld >= k && src.len() >= src_len && dst.len() >= dst_len, "pad_rows: bad sizes");
    super::par_rows(&mut dst[..dst_len], ld, k, 1, |r0, d| {
        for (i, row) in d.chunks_exact_mut(ld).enumerate() {
            let s = (r0 + i) * k;
            row[..k].copy_from_slice(&src[s..s + k]);
        }
    });
}

/// How [`gemm()`] divides an `m x n x k` product among threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Chunks of this many rows of `C` (all of them: one serial call).
    Rows(usize),
    /// One call that the gemm crate splits over this many threads.
    Crate(usize),
    /// Blocks of this many columns of `C`.
    Cols(usize),
}

/// Chooses the [`Split`] for an `m x n x k` product on the current pool or
/// team.
///
/// Whatever it picks, each element of `C` is computed by the same sequence
/// of operations for a given shape, so results do not depend on the thread
/// count. The gemm crate (0.19) picks its summation order from the shape of
/// each call: products with at most 256 outputs use a dot-product kernel,
/// and products with both sides at most 64 block the `k` reduction
/// differently (`kc = min(k, 512)` instead of a balanced split). Every
/// piece of a split therefore takes the path the whole product would, or
/// the pieces do not depend on the thread count:
/// - A batch of at most 64 rows, many columns and a long `k`: blocks of
///   [`col_block`] columns whatever the thread count (such blocks may take
///   the other `k` blocking, so they are fixed by the shape). Each thread
///   packs only its share of `B`, where a row split makes every thread pack
///   all of it: half of the small MLP's `32 x 128 x 784` forward product
///   took 42 microseconds as 64 columns and 58 as 16 rows (one thread).
/// - Large products on two or more threads of the rayon pool: the gemm
///   crate's own split, which tiles `C` in two dimensions, shares its
///   packed panels and keeps its `k` loop serial and in order.
/// - 65 to [`COLS_MAX_ROWS`] rows, many columns, a long `k`: two blocks of
///   columns per worker, at least 128 wide (more than 64 rows keeps every
///   block on the whole product's path). Half of the medium MLP's `128 x 512 x 784` took 541
///   microseconds as 256 columns and 593 as 64 rows (one thread); inside a
///   team this also replaces the crate's split for the large MLP.
/// - Otherwise rows, in chunks no smaller than [`min_chunk_rows`], once the
///   product is worth a fork-join ([`GEMM_PAR_MIN_FLOPS`], an eighth of it
///   inside a team). With a short `k` (the weight gradients at batch 32)
///   packing is cheap either way and rows measured a little faster.
pub fn plan(m: usize, n: usize, k: usize) -> Split {
    let flops = m.saturating_mul(n).saturating_mul(k).saturating_mul(2);
    let wide = n >= 2 * COLS_MIN_BLOCK && k >= COLS_MIN_BLOCK;
    if m <= 64 && wide && flops >= COLS_MIN_FLOPS {
        return Split::Cols(col_block(n));
    }
    let in_team = super::team::current_size().is_some();
    // Inside a team job nothing splits further: plan as on one thread.
    let threads = if super::team::in_job() { 1 } else { rayon::current_num_threads() };
    let crate_min = if threads >= 4 { CRATE_SPLIT_MIN_FLOPS } else { CRATE_SPLIT_MIN_FLOPS_2 };
    // Inside a spinning team the crate's rayon split would compete with it.
    if !in_team && threads >= 2 && flops >= crate_min {
        return Split::Crate(threads);
    }
    let (workers, min_work) = super::workers_for(GEMM_PAR_MIN_FLOPS);
    if m <= COLS_MAX_ROWS && wide && workers >= 2 && flops >= min_work {
        // Two blocks per worker: a helper that joins late (its virtual CPU
        // busy elsewhere) then leaves less for the others to wait on.
        let per = n.div_ceil(2 * workers).div_ceil(16) * 16;
        return Split::Cols(per.max(2 * COLS_MIN_BLOCK));
    }
    let chunks = chunk_count_for(m, 2 * n * k, min_chunk_rows(n), GEMM_PAR_MIN_FLOPS);
    Split::Rows(m.div_ceil(chunks.max(1)))
}

/// Most rows of `C` for which [`plan`] splits by columns.
pub const COLS_MAX_ROWS: usize = 256;
/// Narrowest column block.
pub const COLS_MIN_BLOCK: usize = 64;
/// Least work for the fixed column blocks of batches of at most 64 rows (a
/// fixed size, not a thread count: the blocks decide the summation order).
pub const COLS_MIN_FLOPS: usize = 1 << 20;

/// Width of the fixed column blocks of an `n`-column product of at most 64
/// rows: about a quarter of `n`, a multiple of 16, at least
/// [`COLS_MIN_BLOCK`].
pub fn col_block(n: usize) -> usize {
    (n.div_ceil(4).div_ceil(16) * 16).max(COLS_MIN_BLOCK)
}

/// The fewest rows a parallel chunk of an `n`-column product may have.
///
/// Results must not depend on how rows are split across threads, and the
/// gemm crate (0.19) picks its summation order from the shape of each call:
/// products with at most 256 outputs use a dot-product kernel, and products
/// with both sides at most 64 block the `k` reduction differently (`kc =
/// min(k, 512)` instead of a balanced split). A chunk therefore keeps more
/// than 256 outputs and, when `n <= 64`, more than 64 rows, so every chunk
/// takes the same path as the unsplit product would (an unsplit product too
/// small for that is never split). `result_independent_of_thread_count`
/// checks this on shapes that straddle each limit.
#[inline]
pub fn min_chunk_rows(n: usize) -> usize {
    let by_outputs = 257usize.div_ceil(n.max(1));
    if n <= 64 {
        by_outputs.max(65)
    } else {
        by_outputs.max(8)
    }
}

/// Least work for the gemm crate's own split on four or more threads.
pub const CRATE_SPLIT_MIN_FLOPS: usize = 1 << 26;
/// Least work for the gemm crate's own split on two or three threads (the
/// large MLP's products; the medium MLP's measured no better than rows).
pub const CRATE_SPLIT_MIN_FLOPS_2: usize = 1 << 28;

/// Serial part of [`gemm()`]: computes rows `row0 .. row0 + cc.len() / n` of
/// `C` into `cc`, on the calling thread. `m` is the full row count of op(A).
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn gemm_rows<T: Float>(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: T,
    a: &[T],
    b: &[T],
    ldb: usize,
    beta: T,
    row0: usize,
    cc: &mut [T],
) {
    Product::new(trans_a, trans_b, m, n, k, alpha, a, b, ldb, beta).rows(row0, cc, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn naive(ta: bool, tb: bool, m: usize, n: usize, k: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] };
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                    s += av * bv;
                }
                c[i * n + j] = s;
            }
        }
        c
    }

    #[test]
    fn all_layouts_match_naive() {
        let mut r = Rng::new(0);
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 7),
            (33, 17, 9),
            (130, 70, 300),
            (8, 1, 0),
            (4, 40, 30),
            (20, 100, 37),
            (20, 300, 200),
            (200, 1000, 300),
            (70, 500, 100),
        ] {
            for ta in [false, true] {
                for tb in [false, true] {
                    let a: Vec<f64> = (0..m * k).map(|_| r.normal()).collect();
                    let b: Vec<f64> = (0..k * n).map(|_| r.normal()).collect();
                    let c0: Vec<f64> = (0..m * n).map(|_| r.normal()).collect();
                    let mut c = c0.clone();
                    gemm(ta, tb, m, n, k, 2.0, &a, &b, 0.5, &mut c);
                    let want = naive(ta, tb, m, n, k, &a, &b);
                    for i in 0..m * n {
                        let w = 2.0 * want[i] + 0.5 * c0[i];
                        assert!((c[i] - w).abs() < 1e-9 * (1.0 + w.abs()), "{m}x{n}x{k} {ta} {tb}");
                    }
                }
            }
        }
    }

    #[test]
    fn padded_b_matches_contiguous() {
        assert_eq!(padded_ld::<f32>(1024), Some(1040));
        assert_eq!(padded_ld::<f64>(128), Some(136));
        assert_eq!(padded_ld::<f32>(784), None);
        assert_eq!(padded_ld::<f32>(0), None);
        let mut r = Rng::new(9);
        for &(m, n, k, tb) in &[(40, 30, 256, true), (300, 70, 512, true), (33, 256, 20, false)] {
            let a: Vec<f32> = (0..m * k).map(|_| r.normal() as f32).collect();
            let b: Vec<f32> = (0..n * k).map(|_| r.normal() as f32).collect();
            let (rows, cols) = if tb { (n, k) } else { (k, n) };
            let ld = cols + 16;
            // Poison the gaps: gemm_ldb must never read them.
            let mut padded = vec![f32::NAN; rows * ld];
            pad_rows(&b, rows, cols, ld, &mut padded);
            let mut want = vec![0.0f32; m * n];
            let mut got = vec![0.0f32; m * n];
            gemm(false, tb, m, n, k, 1.0, &a, &b, 0.0, &mut want);
            gemm_ldb(false, tb, m, n, k, 1.0, &a, &padded, ld, 0.0, &mut got);
            assert_eq!(want, got, "{m}x{n}x{k} {tb}");
        }
    }

    #[test]
    fn beta_zero_ignores_nan() {
        let a = [1.0f32; 6];
        let b = [1.0f32; 6];
        let mut c = [f32::NAN; 4];
        gemm(false, false, 2, 2, 3, 1.0, &a, &b, 0.0, &mut c);
        assert_eq!(c, [3.0; 4]);
    }

    #[test]
    fn plans_for_the_benchmark_shapes() {
        let pool = |t: usize| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
        assert_eq!(pool(2).install(|| plan(32, 128, 784)), Split::Cols(64));
        assert_eq!(pool(1).install(|| plan(32, 128, 784)), Split::Cols(64));
        assert_eq!(col_block(1024), 256);
        assert_eq!(col_block(130), 64);
        assert_eq!(pool(2).install(|| plan(128, 784, 32)), Split::Rows(128));
        assert_eq!(pool(2).install(|| plan(256, 1024, 1024)), Split::Crate(2));
        assert_eq!(pool(2).install(|| plan(128, 512, 784)), Split::Cols(128));
        assert_eq!(pool(4).install(|| plan(128, 512, 784)), Split::Crate(4));
        assert_eq!(pool(1).install(|| plan(128, 512, 784)), Split::Rows(128));
        assert_eq!(pool(2).install(|| plan(512, 784, 128)), Split::Rows(256));
        assert_eq!(pool(2).install(|| plan(128, 512, 512)), Split::Cols(128));
        assert_eq!(pool(3).install(|| plan(200, 1000, 300)), Split::Cols(176));
        let in_team = |m, n, k| pool(2).install(|| super::super::team::with_team(2, || plan(m, n, k)));
        assert_eq!(in_team(256, 1024, 1024), Split::Cols(256));
        assert_eq!(in_team(1024, 1024, 256), Split::Rows(512));
        assert_eq!(pool(2).install(|| plan(32, 10, 128)), Split::Rows(32));
    }

    #[test]
    fn result_independent_of_thread_count() {
        let mut r = Rng::new(5);
        // Shapes around the gemm crate's kernel switches: n <= 64 with
        // k > 512, few outputs per chunk, and plain large products.
        // (256, 512, 512) is large enough for the gemm crate's own split at 4
        // threads, (256, 1024, 1024) at 2 and 3.
        for &(m, n, k) in &[
            (256, 300, 500),
            (128, 20, 600),
            (600, 3, 700),
            (130, 64, 1030),
            (90, 10, 784),
            (256, 512, 512),
            (256, 1024, 1024),
            (128, 784, 32),
            (32, 128, 784),
            (64, 200, 300),
            (1, 1000, 1100),
            (20, 300, 200),
            (200, 1000, 300),
            (70, 500, 100),
        ] {
            for (ta, tb) in [(false, true), (true, false), (false, false)] {
                let a: Vec<f32> = (0..m * k).map(|_| r.normal() as f32).collect();
                let b: Vec<f32> = (0..n * k).map(|_| r.normal() as f32).collect();
                let run = |threads: usize| {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    let mut c = vec![0.0f32; m * n];
                    pool.install(|| gemm(ta, tb, m, n, k, 1.0, &a, &b, 0.0, &mut c));
                    c
                };
                let one = run(1);
                assert_eq!(one, run(2), "{m}x{n}x{k} {ta} {tb}");
                assert_eq!(one, run(3), "{m}x{n}x{k} {ta} {tb}");
                assert_eq!(one, run(4), "{m}x{n}x{k} {ta} {tb}");
            }
        }
    }
}
