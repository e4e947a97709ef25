//! Direct convolution: register-tiled micro-kernels over channels-last
//! copies of the data, with no im2col.
//!
//! A tile keeps `R x V` vector accumulators in registers: `R` rows (output
//! positions for the forward pass and the input gradient, input channels
//! for the weight gradient) by `V` vectors of `L` lanes (output or input
//! channels). Each reduction step loads `V` vectors from a packed panel (or
//! a channels-last row of the output gradient) and broadcasts `R` scalars
//! from a channels-last copy of the other operand, one fused multiply-add
//! per accumulator. On a channels-last input padded with zeros, the inputs
//! that one kernel row sees (`kw` and `ci` together) lie one after the
//! other, so one kernel row is one contiguous reduction segment.
//!
//! The tiles are compiled three times, for AVX-512, AVX2+FMA and the
//! baseline, and picked at run time ([`Tiles::detect`]). Every output
//! element is computed by the same sequence of operations whatever the
//! thread count: work is split by sample (forward, input gradient) or by
//! fixed chunks of samples whose partial weight gradients are summed in
//! order.
//!
//! Denormals: the copies the kernels read flush denormal values to zero
//! ([`flush`]); changing the CPU's flush-to-zero mode from Rust is undefined
//! behaviour, so the kernels never do.

use crate::float::Float;
use crate::kernels::activation::Act;
use crate::kernels::transpose::transpose;
use crate::layout::Layout;
use std::marker::PhantomData;

/// One reduction segment: `len` steps starting `a` and `b` elements into
/// the two operands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seg {
    pub a: usize,
    pub b: usize,
    pub len: usize,
}

/// Appends `s` to `segs`, merging it into the last segment when it simply
/// continues it (same strides).
pub fn push_seg(segs: &mut Vec<Seg>, s: Seg, a_ts: usize, b_ts: usize) {
    if s.len == 0 {
        return;
    }
    if let Some(last) = segs.last_mut() {
        if last.a + last.len * a_ts == s.a && last.b + last.len * b_ts == s.b {
            last.len += s.len;
            return;
        }
    }
    segs.push(s);
}

/// What a tile's accumulators start from.
#[derive(Clone, Copy, Debug)]
pub enum Init<'a, T> {
    Zero,
    /// The values already in the output rows.
    Keep,
    /// The same row (a bias) for every row, `vecs x lanes` long.
    Row(&'a [T]),
}

/// What one tile computes: `out[r * out_rs + j] = init + sum_s sum_t
/// a[s.a + t*a_ts + r*a_rs] * b[s.b + t*b_ts + j]` (then `max(0, .)` with
/// `relu`) for `r < R`, `j < live <= V * L`; lanes past `live` are neither
/// read nor written.
struct TileArgs<T> {
    out: *mut T,
    out_rs: usize,
    live: usize,
    /// 0: zero, 1: keep, 2: `row`.
    init: u8,
    row: *const T,
    relu: bool,
    a: *const T,
    a_rs: usize,
    a_ts: usize,
    b: *const T,
    b_ts: usize,
    segs: *const Seg,
    nseg: usize,
}

/// Vector operations a tile is written in.
trait Simd<T: Float> {
    type V: Copy;
    /// Lanes per vector.
    const L: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn splat(x: T) -> Self::V;
    unsafe fn load(p: *const T) -> Self::V;
    unsafe fn store(p: *mut T, v: Self::V);
    /// The first `n <= L` lanes from `p` (the rest zero).
    unsafe fn load_partial(p: *const T, n: usize) -> Self::V;
    /// The first `n <= L` lanes to `p`.
    unsafe fn store_partial(p: *mut T, v: Self::V, n: usize);
    /// `a * b + c`.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `max(v, 0)`.
    unsafe fn relu(v: Self::V) -> Self::V;
}

/// Plain arrays, vectorized by the compiler for whatever the enclosing
/// function enables (AVX2 or the baseline); multiply and add are separate
/// (Rust never fuses them), so results are the same on either.
struct Portable<T>(PhantomData<T>);

const PORTABLE_LANES: usize = 8;

impl<T: Float> Simd<T> for Portable<T> {
    type V = [T; PORTABLE_LANES];
    const L: usize = PORTABLE_LANES;
    #[inline(always)]
    unsafe fn zero() -> Self::V {
        [T::ZERO; PORTABLE_LANES]
    }
    #[inline(always)]
    unsafe fn splat(x: T) -> Self::V {
        [x; PORTABLE_LANES]
    }
    #[inline(always)]
    unsafe fn load(p: *const T) -> Self::V {
        // SAFETY: the caller guarantees `L` readable elements at `p`.
        unsafe { std::ptr::read_unaligned(p as *const Self::V) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut T, v: Self::V) {
        // SAFETY: the caller guarantees `L` writable elements at `p`.
        unsafe { std::ptr::write_unaligned(p as *mut Self::V, v) }
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const T, n: usize) -> Self::V {
        let mut v = [T::ZERO; PORTABLE_LANES];
        for (i, x) in v.iter_mut().enumerate().take(n) {
            // SAFETY: the caller guarantees `n` readable elements at `p`.
            *x = unsafe { *p.add(i) };
        }
        v
    }
    #[inline(always)]
    unsafe fn store_partial(p: *mut T, v: Self::V, n: usize) {
        for (i, &x) in v.iter().enumerate().take(n) {
            // SAFETY: the caller guarantees `n` writable elements at `p`.
            unsafe { *p.add(i) = x };
        }
    }
    #[inline(always)]
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        let mut out = c;
        for i in 0..PORTABLE_LANES {
            out[i] = a[i] * b[i] + c[i];
        }
        out
    }
    #[inline(always)]
    unsafe fn relu(v: Self::V) -> Self::V {
        v.map(|x| if x > T::ZERO { x } else { T::ZERO })
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Simd;
    use crate::float::Float;
    use std::arch::x86_64::*;
    use std::marker::PhantomData;

    /// 512-bit vectors; float64 data is kept in the same register type.
    pub(super) struct Avx512<T>(PhantomData<T>);

    const fn is_f32<T>() -> bool {
        std::mem::size_of::<T>() == 4
    }

    // SAFETY (all methods): only called from functions compiled with
    // `avx512f` enabled, on a CPU that `Tiles::detect` found to support it;
    // the callers guarantee that pointers are valid for a full vector of
    // `L` elements (`load`, `store`) or for `n <= L` (the partial ones,
    // whose masks touch no more). `T` is f32 or f64 (`Float` is sealed), so
    // `L` is 16 or 8 and a mask of `n` bits fits its `u16` or `u8`.
    impl<T: Float> Simd<T> for Avx512<T> {
        type V = __m512;
        const L: usize = 64 / std::mem::size_of::<T>();
        #[inline(always)]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn splat(x: T) -> __m512 {
            if is_f32::<T>() {
                _mm512_set1_ps(x.to_f64() as f32)
            } else {
                _mm512_castpd_ps(_mm512_set1_pd(x.to_f64()))
            }
        }
        #[inline(always)]
        unsafe fn load(p: *const T) -> __m512 {
            // SAFETY: see the impl.
            unsafe { _mm512_loadu_ps(p as *const f32) }
        }
        #[inline(always)]
        unsafe fn store(p: *mut T, v: __m512) {
            // SAFETY: see the impl.
            unsafe { _mm512_storeu_ps(p as *mut f32, v) }
        }
        #[inline(always)]
        unsafe fn load_partial(p: *const T, n: usize) -> __m512 {
            let mask = (1u32 << n) - 1;
            // SAFETY: see the impl; the mask keeps the load within `n` elements.
            unsafe {
                if is_f32::<T>() {
                    _mm512_maskz_loadu_ps(mask as u16, p as *const f32)
                } else {
                    _mm512_castpd_ps(_mm512_maskz_loadu_pd(mask as u8, p as *const f64))
                }
            }
        }
        #[inline(always)]
        unsafe fn store_partial(p: *mut T, v: __m512, n: usize) {
            let mask = (1u32 << n) - 1;
            // SAFETY: see the impl; the mask keeps the store within `n` elements.
            unsafe {
                if is_f32::<T>() {
                    _mm512_mask_storeu_ps(p as *mut f32, mask as u16, v)
                } else {
                    _mm512_mask_storeu_pd(p as *mut f64, mask as u8, _mm512_castps_pd(v))
                }
            }
        }
        #[inline(always)]
        unsafe fn relu(v: __m512) -> __m512 {
            if is_f32::<T>() {
                _mm512_max_ps(v, _mm512_setzero_ps())
            } else {
                _mm512_castpd_ps(_mm512_max_pd(_mm512_castps_pd(v), _mm512_setzero_pd()))
            }
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
            if is_f32::<T>() {
                _mm512_fmadd_ps(a, b, c)
            } else {
                _mm512_castpd_ps(_mm512_fmadd_pd(
                    _mm512_castps_pd(a),
                    _mm512_castps_pd(b),
                    _mm512_castps_pd(c),
                ))
            }
        }
    }
}

/// The tile itself, inlined into one function per instruction set.
///
/// # Safety
/// Every address the segments, rows and lanes reach (see [`TileArgs`]) must
/// be valid: checked by [`Tiles::run`].
#[inline(always)]
unsafe fn tile_body<T: Float, S: Simd<T>, const R: usize, const V: usize>(t: &TileArgs<T>) {
    // SAFETY: the caller guarantees every address below (see above).
    unsafe {
        let lanes = |v: usize| t.live.saturating_sub(v * S::L).min(S::L);
        let mut c = [[S::zero(); V]; R];
        for (r, row) in c.iter_mut().enumerate() {
            for (v, cv) in row.iter_mut().enumerate() {
                *cv = match t.init {
                    0 => S::zero(),
                    // Wrapping: with no live lanes in vector `v` the address
                    // may lie past the end, and nothing is read.
                    1 => S::load_partial(t.out.wrapping_add(r * t.out_rs + v * S::L), lanes(v)),
                    _ => S::load(t.row.add(v * S::L)),
                };
            }
        }
        for s in std::slice::from_raw_parts(t.segs, t.nseg) {
            if s.len == 0 {
                continue;
            }
            let mut pa = t.a.add(s.a);
            let mut pb = t.b.add(s.b);
            for _ in 0..s.len {
                let mut bv = [S::zero(); V];
                for (v, b) in bv.iter_mut().enumerate() {
                    *b = S::load(pb.add(v * S::L));
                }
                for (r, row) in c.iter_mut().enumerate() {
                    let x = S::splat(*pa.add(r * t.a_rs));
                    for (cv, &b) in row.iter_mut().zip(&bv) {
                        *cv = S::fma(x, b, *cv);
                    }
                }
                // Wrapping: after the last step the pointers may point past
                // the end; they are not read again.
                pa = pa.wrapping_add(t.a_ts);
                pb = pb.wrapping_add(t.b_ts);
            }
        }
        for (r, row) in c.iter().enumerate() {
            for (v, &cv) in row.iter().enumerate() {
                let cv = if t.relu { S::relu(cv) } else { cv };
                let n = lanes(v);
                if n == S::L {
                    S::store(t.out.add(r * t.out_rs + v * S::L), cv);
                } else if n > 0 {
                    S::store_partial(t.out.add(r * t.out_rs + v * S::L), cv, n);
                }
            }
        }
    }
}

type TileFn<T> = unsafe fn(&TileArgs<T>);

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<T: Float, const R: usize, const V: usize>(t: &TileArgs<T>) {
    // SAFETY: forwarded from the caller; the CPU supports AVX-512F.
    unsafe { tile_body::<T, avx512::Avx512<T>, R, V>(t) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<T: Float, const R: usize, const V: usize>(t: &TileArgs<T>) {
    // SAFETY: forwarded from the caller; the CPU supports AVX2.
    unsafe { tile_body::<T, Portable<T>, R, V>(t) }
}

unsafe fn tile_base<T: Float, const R: usize, const V: usize>(t: &TileArgs<T>) {
    // SAFETY: forwarded from the caller.
    unsafe { tile_body::<T, Portable<T>, R, V>(t) }
}

/// Most rows a tile can have on any instruction set.
const MAX_ROWS: usize = 14;

macro_rules! tile_table {
    ($f:ident, $T:ty, $($r:literal)*) => {{
        let mut t: [[Option<TileFn<$T>>; 2]; MAX_ROWS + 1] = [[None; 2]; MAX_ROWS + 1];
        $( t[$r] = [Some($f::<$T, $r, 1> as TileFn<$T>), Some($f::<$T, $r, 2> as TileFn<$T>)]; )*
        t
    }};
}

/// The micro-kernels for the CPU at hand.
///
/// Its fields are private: [`Tiles::run`] checks its bounds with `lanes`,
/// which must be the width the chosen kernels really load and store.
pub struct Tiles<T> {
    /// Lanes per vector.
    lanes: usize,
    /// Most rows per tile (what fits the registers with two vectors a row).
    rows: usize,
    fns: [[Option<TileFn<T>>; 2]; MAX_ROWS + 1],
}

#[cfg(test)]
thread_local! {
    /// Tests: make [`Tiles::detect`] on this thread pick the portable kernels.
    pub(crate) static FORCE_BASELINE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl<T: Float> Tiles<T> {
    /// The widest instruction set this CPU supports.
    pub fn detect() -> Self {
        #[cfg(test)]
        if FORCE_BASELINE.with(|f| f.get()) {
            return Self::baseline();
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                return Tiles {
                    lanes: 64 / std::mem::size_of::<T>(),
                    rows: 14,
                    fns: tile_table!(tile_avx512, T, 1 2 3 4 5 6 7 8 9 10 11 12 13 14),
                };
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Tiles { lanes: PORTABLE_LANES, rows: 6, fns: tile_table!(tile_avx2, T, 1 2 3 4 5 6) };
            }
        }
        Self::baseline()
    }

    /// The portable kernels only (for tests and CPUs without AVX2).
    pub fn baseline() -> Self {
        Tiles { lanes: PORTABLE_LANES, rows: 3, fns: tile_table!(tile_base, T, 1 2 3) }
    }

    /// Lanes per vector (channel blocks and panels are padded to it).
    pub fn lanes(&self) -> usize {
        self.lanes
    }

    /// Most rows per tile (what fits the registers with two vectors a row).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Runs one tile of `rows` rows by `vecs` vectors of lanes:
    /// `out[r * out.rs + j] = init + sum_s sum_t a[s.a + t*a_ts + r*a_rs] *
    /// b[s.b + t*b_ts + j]` (then `max(0, .)` with `relu`) for `j <
    /// out.live`. Panics if any element it would touch lies outside the
    /// slices (the extents are computed with checked arithmetic, so sizes
    /// whose products overflow are refused too), or the tile shape is not
    /// supported.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        rows: usize,
        vecs: usize,
        out: &mut Out<'_, T>,
        init: Init<'_, T>,
        relu: bool,
        a: &[T],
        a_rs: usize,
        a_ts: usize,
        b: &[T],
        b_ts: usize,
        segs: &[Seg],
    ) {
        let f = (1..=2)
            .contains(&vecs)
            .then(|| self.fns.get(rows).and_then(|r| r[vecs - 1]))
            .flatten()
            .unwrap_or_else(|| panic!("conv tile: no kernel for {rows} rows x {vecs} vectors"));
        // `rows >= 1` and `vecs <= 2` here (a kernel exists for them).
        let width = vecs * self.lanes;
        assert!(out.live <= width, "conv tile: {} live lanes in {width}", out.live);
        // The last element an access reaches, `base + steps * stride + ...`,
        // or `None` when that overflows (then it cannot lie in any slice).
        let end = |base: usize, terms: &[(usize, usize)]| {
            terms.iter().try_fold(base, |acc, &(n, stride)| n.checked_mul(stride)?.checked_add(acc))
        };
        let out_end = end(out.live, &[(rows - 1, out.rs)]);
        assert!(out_end.is_some_and(|e| e <= out.data.len()), "conv tile: output rows out of bounds");
        let (init, row) = match init {
            Init::Zero => (0, std::ptr::null()),
            Init::Keep => (1, std::ptr::null()),
            Init::Row(r) => {
                assert!(r.len() >= width, "conv tile: initial row too short");
                (2, r.as_ptr())
            }
        };
        for s in segs.iter().filter(|s| s.len > 0) {
            let a_end = end(s.a, &[(s.len - 1, a_ts), (rows - 1, a_rs)]);
            let b_end = end(s.b, &[(s.len - 1, b_ts), (1, width - 1)]);
            assert!(
                a_end.is_some_and(|e| e < a.len()) && b_end.is_some_and(|e| e < b.len()),
                "conv tile: segment {s:?} out of bounds"
            );
        }
        let args = TileArgs {
            out: out.data.as_mut_ptr(),
            out_rs: out.rs,
            live: out.live,
            init,
            row,
            relu,
            a: a.as_ptr(),
            a_rs,
            a_ts,
            b: b.as_ptr(),
            b_ts,
            segs: segs.as_ptr(),
            nseg: segs.len(),
        };
        // SAFETY: `detect` (or `baseline`) chose `f` for an instruction set
        // this CPU has, and set `self.lanes` (private, never changed) to the
        // lanes its vectors hold, `S::L`; every element a segment reaches was
        // checked above, without overflow, to lie inside `a` and `b` (a
        // segment of length 0 reaches none and `tile_body` skips it), every
        // output lane (`r < rows`, `j < live`) inside `out.data`, the
        // initial row (`width` elements) inside its slice; `out.data` (a
        // unique borrow) cannot alias `a`, `b` or the row.
        unsafe { f(&args) }
    }
}

/// The rows a tile writes: `data[r * rs .. r * rs + live]`.
pub struct Out<'a, T> {
    pub data: &'a mut [T],
    pub rs: usize,
    pub live: usize,
}

impl<'a, T> Out<'a, T> {
    /// A dense `rows x width` buffer.
    pub fn dense(data: &'a mut [T], width: usize) -> Self {
        Out { data, rs: width, live: width }
    }
}

/// A value with denormals replaced by zero (they can cost hundreds of
/// cycles per operation on some CPUs).
#[inline(always)]
pub fn flush<T: Float>(v: T) -> T {
    if v.abs() < T::MIN_POSITIVE {
        T::ZERO
    } else {
        v
    }
}

/// Rows per tile for `n` rows with at most `max` per tile: balanced blocks.
pub fn row_blocks(n: usize, max: usize) -> impl Iterator<Item = (usize, usize)> {
    let count = n.div_ceil(max.max(1)).max(1);
    let base = n / count;
    let extra = n % count;
    (0..count).scan(0, move |start, i| {
        let len = base + usize::from(i < extra);
        let s = *start;
        *start += len;
        Some((s, len))
    })
}

/// Channel blocks of `c` channels (padded to `lanes`): two vectors wide,
/// then one for a remainder. Yields `(first channel, vectors)`.
pub fn channel_blocks(c: usize, lanes: usize) -> impl Iterator<Item = (usize, usize)> {
    let padded = c.div_ceil(lanes) * lanes;
    (0..padded).step_by(2 * lanes).map(move |c0| (c0, if c0 + 2 * lanes <= padded { 2 } else { 1 }))
}

/// Segments per call of [`Tiles::run`] when they are made on the fly.
const SEG_CHUNK: usize = 64;

/// Collects segments (merging those that continue each other) into a stack
/// buffer and hands them over in chunks of at most [`SEG_CHUNK`], as
/// `flush(segs, first, last)`: every tile gets at least one call (with no
/// segments when there are none), and exactly one `last`.
struct SegBuf {
    segs: [Seg; SEG_CHUNK],
    len: usize,
    a_ts: usize,
    b_ts: usize,
    calls: usize,
}

impl SegBuf {
    fn new(a_ts: usize, b_ts: usize) -> Self {
        SegBuf { segs: [Seg::default(); SEG_CHUNK], len: 0, a_ts, b_ts, calls: 0 }
    }

    /// Adds `s`; when the buffer is full, first passes it to `flush`.
    fn push(&mut self, s: Seg, flush: &mut impl FnMut(&[Seg], bool, bool)) {
        if s.len == 0 {
            return;
        }
        if self.len > 0 {
            let last = &mut self.segs[self.len - 1];
            if last.a + last.len * self.a_ts == s.a && last.b + last.len * self.b_ts == s.b {
                last.len += s.len;
                return;
            }
        }
        if self.len == SEG_CHUNK {
            flush(&self.segs[..], self.calls == 0, false);
            self.calls += 1;
            self.len = 0;
        }
        self.segs[self.len] = s;
        self.len += 1;
    }

    fn finish(&mut self, flush: &mut impl FnMut(&[Seg], bool, bool)) {
        flush(&self.segs[..self.len], self.calls == 0, true);
        self.calls += 1;
        self.len = 0;
    }
}

/// A 2-D convolution's shape, as torch's `Conv2d` (a 1-D one has
/// `h = kh = 1`): per-sample input `(cin, h, w)`, output `(cout, oh, ow)`,
/// padding top/left/bottom/right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    pub pt: usize,
    pub pl: usize,
    pub pb: usize,
    pub pr: usize,
    pub oh: usize,
    pub ow: usize,
}

/// Where the channels-last copy of the output gradient keeps each
/// position: rows `offh..offh + oh`, columns `offw..offw + ow` of an
/// `hz x wz` grid of `cpad` channels, zeros around (room for the input
/// gradient's taps that fall outside the output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GradLayout {
    pub offh: usize,
    pub offw: usize,
    pub hz: usize,
    pub wz: usize,
    pub cpad: usize,
}

impl GradLayout {
    /// Elements per sample.
    pub fn len(&self) -> usize {
        self.hz * self.wz * self.cpad
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn floor_div(a: isize, b: usize) -> isize {
    a.div_euclid(b as isize)
}

impl ConvGeom {
    /// Padded input height and width.
    pub fn hp(&self) -> usize {
        self.h + self.pt + self.pb
    }

    pub fn wp(&self) -> usize {
        self.w + self.pl + self.pr
    }

    /// Reduction length of one output: `kh * kw * cin`.
    pub fn k(&self) -> usize {
        self.kh * self.kw * self.cin
    }

    /// Elements of one sample's padded channels-last input.
    pub fn xp_len(&self) -> usize {
        self.hp() * self.wp() * self.cin
    }

    /// Elements of the forward weight panel for `lanes`-wide vectors.
    pub fn panel_len(&self, lanes: usize) -> usize {
        self.cout.div_ceil(lanes) * lanes * self.k()
    }

    /// Elements of the input-gradient weight panel.
    pub fn panel_t_len(&self, lanes: usize) -> usize {
        self.cin.div_ceil(lanes) * lanes * self.kh * self.kw * self.cout.div_ceil(lanes) * lanes
    }

    /// Elements of the weight gradient in the kernels' layout
    /// `[kh][kw][ci][cpad]`.
    pub fn dw_len(&self, lanes: usize) -> usize {
        self.k() * self.cout.div_ceil(lanes) * lanes
    }

    /// The output gradient's layout: padded for the input gradient's taps
    /// when `for_dx`, else just the output positions.
    pub fn grad_layout(&self, lanes: usize, for_dx: bool) -> GradLayout {
        let cpad = self.cout.div_ceil(lanes) * lanes;
        if !for_dx {
            return GradLayout { offh: 0, offw: 0, hz: self.oh, wz: self.ow, cpad };
        }
        let low = |p: usize, k: usize, d: usize, s: usize| {
            (-floor_div(p as isize - ((k - 1) * d) as isize, s)).max(0) as usize
        };
        let offh = low(self.pt, self.kh, self.dh, self.sh);
        let offw = low(self.pl, self.kw, self.dw, self.sw);
        let hz = offh + self.oh.max((self.h - 1 + self.pt) / self.sh + 1);
        let wz = offw + self.ow.max((self.w - 1 + self.pl) / self.sw + 1);
        GradLayout { offh, offw, hz, wz, cpad }
    }
}

/// Packs the torch-layout weight `(cout, cin, kh, kw)` into the forward
/// panel: per output-channel block (see [`channel_blocks`]), `[k][width]`
/// with `k = (kh * kw_size + kw) * cin + ci`, zeros past `cout`.
pub fn pack_forward<T: Float>(g: &ConvGeom, lanes: usize, w: &[T], panel: &mut [T]) {
    let k = g.k();
    assert!(w.len() >= g.cout * k && panel.len() >= g.panel_len(lanes), "pack_forward: bad sizes");
    let khw = g.kh * g.kw;
    // Blocks of two vectors' channels (the last may be one), in parallel.
    let blocks: Vec<(usize, usize)> = channel_blocks(g.cout, lanes).collect();
    let panel = &mut panel[..g.panel_len(lanes)];
    crate::kernels::par_chunks(panel, 2 * lanes * k, |i, block| {
        let (co0, vecs) = blocks[i];
        let width = vecs * lanes;
        for j in 0..width {
            let co = co0 + j;
            if co >= g.cout {
                for t in 0..k {
                    block[t * width + j] = T::ZERO;
                }
                continue;
            }
            for ci in 0..g.cin {
                let src = &w[(co * g.cin + ci) * khw..][..khw];
                for (tap, &v) in src.iter().enumerate() {
                    block[(tap * g.cin + ci) * width + j] = flush(v);
                }
            }
        }
    });
}

/// Packs the weight for the input gradient: per input-channel block,
/// `[kh'][kw'][co][width]` with the kernel flipped (`kh' = kh_size-1-kh`),
/// `co` padded to whole vectors, zeros past `cin` and `cout`.
pub fn pack_backward<T: Float>(g: &ConvGeom, lanes: usize, w: &[T], panel: &mut [T]) {
    let cpad = g.cout.div_ceil(lanes) * lanes;
    let khw = g.kh * g.kw;
    let kb = khw * cpad;
    assert!(w.len() >= g.cout * g.k() && panel.len() >= g.panel_t_len(lanes), "pack_backward: bad sizes");
    let blocks: Vec<(usize, usize)> = channel_blocks(g.cin, lanes).collect();
    let panel = &mut panel[..g.panel_t_len(lanes)];
    crate::kernels::par_chunks(panel, 2 * lanes * kb, |i, block| {
        let (ci0, vecs) = blocks[i];
        let width = vecs * lanes;
        block.fill(T::ZERO);
        for co in 0..g.cout {
            for j in 0..width.min(g.cin - ci0) {
                let src = &w[(co * g.cin + ci0 + j) * khw..][..khw];
                for (tap, &v) in src.iter().enumerate() {
                    // Flipped: tap (kh, kw) goes to (kh_size-1-kh, kw_size-1-kw).
                    let t = khw - 1 - tap;
                    block[(t * cpad + co) * width + j] = flush(v);
                }
            }
        }
    });
}

/// One sample's input `(cin, h, w)` (ordered by `layout`) into its padded
/// channels-last copy `(hp, wp, cin)`, zeros in the padding.
pub fn pad_input<T: Float>(g: &ConvGeom, layout: Layout, x: &[T], xp: &mut [T]) {
    let (wp, cin) = (g.wp(), g.cin);
    assert!(x.len() >= cin * g.h * g.w && xp.len() >= g.xp_len(), "pad_input: bad sizes");
    let hw = g.h * g.w;
    for (hp, row) in xp[..g.xp_len()].chunks_exact_mut(wp * cin).enumerate() {
        if hp < g.pt || hp >= g.pt + g.h {
            row.fill(T::ZERO);
            continue;
        }
        let ih = hp - g.pt;
        row[..g.pl * cin].fill(T::ZERO);
        row[(g.pl + g.w) * cin..].fill(T::ZERO);
        let inner = &mut row[g.pl * cin..(g.pl + g.w) * cin];
        if layout == Layout::ChannelsLast {
            let src = &x[ih * g.w * cin..(ih + 1) * g.w * cin];
            for (d, &s) in inner.iter_mut().zip(src) {
                *d = flush(s);
            }
        } else if cin == 1 {
            for (d, &s) in inner.iter_mut().zip(&x[ih * g.w..(ih + 1) * g.w]) {
                *d = flush(s);
            }
        } else {
            transpose(cin, g.w, &x[ih * g.w..], hw, inner, cin);
            inner.iter_mut().for_each(|v| *v = flush(*v));
        }
    }
}

/// One sample's forward pass: `y (cout, oh, ow) = act(conv(x) + bias)`
/// (ordered by `layout`) from its padded input `xp` and the packed weight.
#[allow(clippy::too_many_arguments)]
pub fn forward_sample<T: Float>(
    g: &ConvGeom,
    tiles: &Tiles<T>,
    xp: &[T],
    panel: &[T],
    bias: Option<&[T]>,
    act: Act,
    layout: Layout,
    y: &mut [T],
) {
    let (lanes, k, cin, wp) = (tiles.lanes, g.k(), g.cin, g.wp());
    let plane = g.oh * g.ow;
    assert!(xp.len() >= g.xp_len() && y.len() >= g.cout * plane && panel.len() >= g.panel_len(lanes));
    let mut acc = [T::ZERO; 2 * 64 * MAX_ROWS];
    let mut brow = [T::ZERO; 2 * 64];
    for (co0, vecs) in channel_blocks(g.cout, lanes) {
        let width = vecs * lanes;
        let block = &panel[co0 * k..co0 * k + k * width];
        let live = width.min(g.cout - co0);
        let brow = &mut brow[..width];
        brow.fill(T::ZERO);
        if let Some(b) = bias {
            brow[..live].copy_from_slice(&b[co0..co0 + live]);
        }
        let relu = act == Act::Relu;
        for oh in 0..g.oh {
            for (ow0, rows) in row_blocks(g.ow, tiles.rows) {
                let at = oh * g.ow + ow0;
                let x = &xp[(oh * g.sh * wp + ow0 * g.sw) * cin..];
                // Channels-last output: the tile writes its rows in place;
                // planar: into `acc`, then a transpose into channel planes.
                let mut out = match layout {
                    Layout::ChannelsLast => Out { data: &mut y[at * g.cout + co0..], rs: g.cout, live },
                    Layout::Planar => Out::dense(&mut acc[..rows * width], width),
                };
                {
                    // One segment per kernel row (per tap when dilated).
                    let mut run = |segs: &[Seg], first: bool, last: bool| {
                        let init = if first { Init::Row(&*brow) } else { Init::Keep };
                        tiles.run(
                            rows,
                            vecs,
                            &mut out,
                            init,
                            relu && last,
                            x,
                            g.sw * cin,
                            1,
                            block,
                            width,
                            segs,
                        )
                    };
                    let mut sb = SegBuf::new(1, width);
                    for kh in 0..g.kh {
                        for kw in 0..g.kw {
                            let a = (kh * g.dh * wp + kw * g.dw) * cin;
                            sb.push(Seg { a, b: (kh * g.kw + kw) * cin * width, len: cin }, &mut run);
                        }
                    }
                    sb.finish(&mut run);
                }
                let rs = out.rs;
                if !relu && act != Act::Identity {
                    for r in 0..rows {
                        crate::kernels::activation::forward_serial(act, &mut out.data[r * rs..r * rs + live]);
                    }
                }
                if layout == Layout::Planar {
                    transpose(rows, live, &acc[..rows * width], width, &mut y[co0 * plane + at..], plane);
                }
            }
        }
    }
}

crate::multiversion! {
    /// `dy = flush(dy * act'(y))` in place (the derivative from the output).
    fn grad_flush<T: Float>(act: Act, y: &[T], dy: &mut [T]) {
        let it = dy.iter_mut().zip(y);
        match act {
            Act::Identity => it.for_each(|(g, _)| *g = flush(*g)),
            Act::Relu => it.for_each(|(g, &yi)| *g = if yi > T::ZERO { flush(*g) } else { T::ZERO }),
            a => it.for_each(|(g, &yi)| *g = flush(*g * a.derivative_at_output(yi))),
        }
    }
}

/// One sample's output gradient `(cout, oh, ow)` (ordered by `order`),
/// times the fused activation's derivative (from the output `y`, in place in
/// `dy`), into its channels-last copy (`layout`), zeros around.
pub fn pad_grad<T: Float>(
    g: &ConvGeom,
    layout: &GradLayout,
    order: Layout,
    act: Act,
    y: &[T],
    dy: &mut [T],
    dz: &mut [T],
) {
    let plane = g.oh * g.ow;
    assert!(y.len() >= g.cout * plane && dy.len() >= g.cout * plane);
    let dy = &mut dy[..g.cout * plane];
    grad_flush(act, &y[..g.cout * plane], dy);
    pad_output(g, layout, order, dy, dz, false);
}

/// One sample's values in the shape of the output, `(cout, oh, ow)`
/// (ordered by `order`), into the channels-last layout of the output
/// gradient (`layout`), zeros around; denormals flushed when `flush_values`.
/// A transposed convolution lays out its input this way: its forward pass
/// is this convolution's input gradient.
pub fn pad_output<T: Float>(
    g: &ConvGeom,
    layout: &GradLayout,
    order: Layout,
    dy: &[T],
    dz: &mut [T],
    flush_values: bool,
) {
    let plane = g.oh * g.ow;
    let GradLayout { offh, offw, hz, wz, cpad } = *layout;
    assert!(dy.len() >= g.cout * plane && dz.len() >= layout.len(), "pad_output: bad sizes");
    let dz = &mut dz[..layout.len()];
    // Zeros where no output position lies: whole rows above and below,
    // columns left and right, channels past `cout`.
    let row_len = wz * cpad;
    dz[..offh * row_len].fill(T::ZERO);
    dz[(offh + g.oh) * row_len..hz * row_len].fill(T::ZERO);
    for oh in 0..g.oh {
        let row = &mut dz[(oh + offh) * row_len..(oh + offh + 1) * row_len];
        row[..offw * cpad].fill(T::ZERO);
        row[(offw + g.ow) * cpad..].fill(T::ZERO);
        if cpad > g.cout {
            for pos in row[offw * cpad..(offw + g.ow) * cpad].chunks_exact_mut(cpad) {
                pos[g.cout..].fill(T::ZERO);
            }
        }
    }
    let dy = &dy[..g.cout * plane];
    for oh in 0..g.oh {
        let to = ((oh + offh) * wz + offw) * cpad;
        match order {
            Layout::Planar => transpose(g.cout, g.ow, &dy[oh * g.ow..], plane, &mut dz[to..], cpad),
            Layout::ChannelsLast => {
                let src = &dy[oh * g.ow * g.cout..(oh + 1) * g.ow * g.cout];
                let dst = &mut dz[to..to + g.ow * cpad];
                if cpad == g.cout {
                    dst.copy_from_slice(src);
                } else {
                    for (d, s) in dst.chunks_exact_mut(cpad).zip(src.chunks_exact(g.cout)) {
                        d[..g.cout].copy_from_slice(s);
                    }
                }
            }
        }
        if flush_values {
            dz[to..to + g.ow * cpad].iter_mut().for_each(|v| *v = flush(*v));
        }
    }
}

/// One sample's input gradient `dx (cin, h, w)` (ordered by `order`) from
/// its channels-last output gradient `dz` (laid out by
/// [`ConvGeom::grad_layout`] with `for_dx`) and the packed, flipped weight.
pub fn input_grad_sample<T: Float>(
    g: &ConvGeom,
    tiles: &Tiles<T>,
    layout: &GradLayout,
    dz: &[T],
    panel_t: &[T],
    order: Layout,
    dx: &mut [T],
) {
    let lanes = tiles.lanes;
    let GradLayout { offh, offw, wz, cpad, .. } = *layout;
    let kb = g.kh * g.kw * cpad;
    let plane = g.h * g.w;
    assert!(dz.len() >= layout.len() && dx.len() >= g.cin * plane && panel_t.len() >= g.panel_t_len(lanes));
    let mut acc = [T::ZERO; 2 * 64 * MAX_ROWS];
    for ih in 0..g.h {
        for phase in 0..g.sw.min(g.w) {
            let cols = (g.w - phase).div_ceil(g.sw);
            for (ci0, vecs) in channel_blocks(g.cin, lanes) {
                let width = vecs * lanes;
                let live = width.min(g.cin - ci0);
                let block = &panel_t[ci0 * kb..ci0 * kb + kb * width];
                for (j0, rows) in row_blocks(cols, tiles.rows) {
                    let cl = order == Layout::ChannelsLast;
                    let mut out = if cl {
                        let at = (ih * g.w + phase + g.sw * j0) * g.cin + ci0;
                        Out { data: &mut dx[at..], rs: g.sw * g.cin, live }
                    } else {
                        Out::dense(&mut acc[..rows * width], width)
                    };
                    {
                        // The taps that reach this row and phase: one
                        // segment each, merged along kernel rows.
                        let z = &dz[j0 * cpad..];
                        let mut run = |segs: &[Seg], first: bool, _last: bool| {
                            let init = if first { Init::Zero } else { Init::Keep };
                            tiles.run(rows, vecs, &mut out, init, false, z, cpad, 1, block, width, segs)
                        };
                        let mut sb = SegBuf::new(1, width);
                        for khp in 0..g.kh {
                            let kh = g.kh - 1 - khp;
                            let num = (ih + g.pt) as isize - (kh * g.dh) as isize;
                            if num.rem_euclid(g.sh as isize) != 0 {
                                continue;
                            }
                            let row = (floor_div(num, g.sh) + offh as isize) as usize;
                            for kwp in 0..g.kw {
                                let kw = g.kw - 1 - kwp;
                                let numw = (phase + g.pl) as isize - (kw * g.dw) as isize;
                                if numw.rem_euclid(g.sw as isize) != 0 {
                                    continue;
                                }
                                let col = (floor_div(numw, g.sw) + offw as isize) as usize;
                                let a = (row * wz + col) * cpad;
                                sb.push(Seg { a, b: (khp * g.kw + kwp) * cpad * width, len: cpad }, &mut run);
                            }
                        }
                        sb.finish(&mut run);
                    }
                    if cl {
                        continue;
                    }
                    if g.sw == 1 {
                        transpose(
                            rows,
                            live,
                            &acc[..rows * width],
                            width,
                            &mut dx[ci0 * plane + ih * g.w + j0..],
                            plane,
                        );
                    } else {
                        for c in 0..live {
                            let out = &mut dx[(ci0 + c) * plane + ih * g.w..][..g.w];
                            for r in 0..rows {
                                out[phase + g.sw * (j0 + r)] = acc[r * width + c];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The weight and bias gradient of samples `0..n` of `xp` and `dz` (each
/// sample's padded input and channels-last output gradient, one after the
/// other), summed in sample order into `dw` (`[kh][kw][ci][cpad]`,
/// overwritten) and `db` (`cpad`, overwritten). Each tile of `dw` keeps its
/// accumulators over all `n` samples, whose data stays in cache meanwhile.
#[allow(clippy::too_many_arguments)]
pub fn weight_grad<T: Float>(
    g: &ConvGeom,
    tiles: &Tiles<T>,
    layout: &GradLayout,
    n: usize,
    xp: &[T],
    dz: &[T],
    dw: &mut [T],
    db: &mut [T],
) {
    let lanes = tiles.lanes;
    let GradLayout { offh, offw, wz, cpad, .. } = *layout;
    let (cin, wp) = (g.cin, g.wp());
    let (xlen, zlen) = (g.xp_len(), layout.len());
    assert!(xp.len() >= n * xlen && dz.len() >= n * zlen && dw.len() >= g.dw_len(lanes) && db.len() >= cpad);
    let (xp, dz) = (&xp[..n * xlen], &dz[..n * zlen]);
    // Row groups: rows of one group lie one element apart in the input.
    let (groups, glen) = if g.dw == 1 { (g.kh, g.kw * cin) } else { (g.kh * g.kw, cin) };
    for grp in 0..groups {
        let (kh, kw) = if g.dw == 1 { (grp, 0) } else { (grp / g.kw, grp % g.kw) };
        let goff = (kh * g.dh * wp + kw * g.dw) * cin;
        for (q0, rows) in row_blocks(glen, tiles.rows) {
            let row0 = grp * glen + q0;
            let x = &xp[goff + q0..];
            for (co0, vecs) in channel_blocks(g.cout, lanes) {
                let width = vecs * lanes;
                let mut out = Out { data: &mut dw[row0 * cpad + co0..], rs: cpad, live: width };
                {
                    let mut run = |segs: &[Seg], first: bool, _last: bool| {
                        let init = if first { Init::Zero } else { Init::Keep };
                        tiles.run(rows, vecs, &mut out, init, false, x, 1, g.sw * cin, dz, cpad, segs)
                    };
                    let mut sb = SegBuf::new(g.sw * cin, cpad);
                    for s in 0..n {
                        for oh in 0..g.oh {
                            let seg = Seg {
                                a: s * xlen + oh * g.sh * wp * cin,
                                b: s * zlen + ((oh + offh) * wz + offw) * cpad + co0,
                                len: g.ow,
                            };
                            sb.push(seg, &mut run);
                        }
                    }
                    sb.finish(&mut run);
                }
            }
        }
    }
    let db = &mut db[..cpad];
    db.fill(T::ZERO);
    for z in dz.chunks_exact(zlen) {
        for oh in 0..g.oh {
            let row = &z[((oh + offh) * wz + offw) * cpad..][..g.ow * cpad];
            for pos in row.chunks_exact(cpad) {
                for (b, &v) in db.iter_mut().zip(pos) {
                    *b += v;
                }
            }
        }
    }
}

/// Adds (or writes, when `!accumulate`) the kernels' weight gradient
/// `[kh][kw][ci][cpad]` into a torch-layout gradient `(cout, cin, kh, kw)`.
pub fn unpack_weight_grad<T: Float>(g: &ConvGeom, lanes: usize, dw: &[T], grad: &mut [T], accumulate: bool) {
    let cpad = g.cout.div_ceil(lanes) * lanes;
    let khw = g.kh * g.kw;
    assert!(dw.len() >= g.dw_len(lanes) && grad.len() >= g.cout * g.k());
    for co in 0..g.cout {
        for ci in 0..g.cin {
            for tap in 0..khw {
                let v = dw[(tap * g.cin + ci) * cpad + co];
                let o = &mut grad[(co * g.cin + ci) * khw + tap];
                *o = if accumulate { *o + v } else { v };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_tiles<T: Float>(tiles: &Tiles<T>) {
        let l = tiles.lanes;
        for rows in 1..=tiles.rows {
            for vecs in 1..=2 {
                let width = vecs * l;
                let (a_rs, a_ts, b_ts) = (3, 2, width + 1);
                let segs = [Seg { a: 1, b: 0, len: 4 }, Seg { a: 30, b: 4 * b_ts, len: 3 }];
                let a: Vec<T> =
                    (0..60 + rows * a_rs).map(|i| T::from_f64(((i * 7) % 11) as f64 - 5.0)).collect();
                let b: Vec<T> =
                    (0..8 * b_ts + width).map(|i| T::from_f64(((i * 5) % 13) as f64 - 6.0)).collect();
                let acc: Vec<T> = (0..rows * width).map(|i| T::from_f64(i as f64)).collect();
                let mut want = acc.clone();
                let bias: Vec<T> = (0..width).map(|j| T::from_f64(j as f64 - 3.0)).collect();
                for r in 0..rows {
                    for j in 0..width {
                        for s in &segs {
                            for t in 0..s.len {
                                want[r * width + j] += a[s.a + t * a_ts + r * a_rs] * b[s.b + t * b_ts + j];
                            }
                        }
                    }
                }
                let mut kept = acc.clone();
                tiles.run(
                    rows,
                    vecs,
                    &mut Out::dense(&mut kept, width),
                    Init::Keep,
                    false,
                    &a,
                    a_rs,
                    a_ts,
                    &b,
                    b_ts,
                    &segs,
                );
                // Small integers: every kernel gives the exact sums.
                assert_eq!(kept, want, "{rows} x {vecs}");
                // From a bias row, with ReLU, into rows 3 apart of which 2
                // lanes stay untouched.
                let live = width - 2;
                let rs = width + 3;
                let mut strided = vec![T::from_f64(99.0); (rows - 1) * rs + width];
                let mut out = Out { data: &mut strided, rs, live };
                tiles.run(rows, vecs, &mut out, Init::Row(&bias), true, &a, a_rs, a_ts, &b, b_ts, &segs);
                for r in 0..rows {
                    for j in 0..width {
                        let sum = want[r * width + j] - acc[r * width + j] + bias[j];
                        let expect = if j < live { sum.max(T::ZERO) } else { T::from_f64(99.0) };
                        assert_eq!(strided[r * rs + j], expect, "{rows} x {vecs} row {r} lane {j}");
                    }
                }
            }
        }
    }

    #[test]
    fn tiles_compute_their_sums() {
        check_tiles::<f32>(&Tiles::detect());
        check_tiles::<f64>(&Tiles::detect());
        check_tiles::<f32>(&Tiles::baseline());
        check_tiles::<f64>(&Tiles::baseline());
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn tile_refuses_a_segment_past_the_end() {
        let tiles = Tiles::<f32>::baseline();
        let mut acc = vec![0.0f32; 8];
        let a = vec![0.0f32; 10];
        let b = vec![0.0f32; 8];
        let mut out = Out::dense(&mut acc, 8);
        tiles.run(1, 1, &mut out, Init::Zero, false, &a, 1, 1, &b, 0, &[Seg { a: 5, b: 0, len: 6 }]);
    }

    #[test]
    fn blocks_cover_everything() {
        let rows: Vec<_> = row_blocks(160, 14).collect();
        assert_eq!(rows.len(), 12);
        assert_eq!(rows.iter().map(|r| r.1).sum::<usize>(), 160);
        assert!(rows.iter().all(|r| (13..=14).contains(&r.1)));
        assert_eq!(row_blocks(28, 14).collect::<Vec<_>>(), [(0, 14), (14, 14)]);
        assert_eq!(channel_blocks(64, 16).collect::<Vec<_>>(), [(0, 2), (32, 2)]);
        assert_eq!(channel_blocks(40, 16).collect::<Vec<_>>(), [(0, 2), (32, 1)]);
        assert_eq!(channel_blocks(1, 8).collect::<Vec<_>>(), [(0, 1)]);
        let mut segs = Vec::new();
        push_seg(&mut segs, Seg { a: 0, b: 0, len: 5 }, 1, 32);
        push_seg(&mut segs, Seg { a: 5, b: 160, len: 5 }, 1, 32);
        push_seg(&mut segs, Seg { a: 20, b: 320, len: 5 }, 1, 32);
        assert_eq!(segs, [Seg { a: 0, b: 0, len: 10 }, Seg { a: 20, b: 320, len: 5 }]);
    }
}
