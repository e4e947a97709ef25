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

/// What one tile computes: `acc[r][j] += sum_s sum_t a[s.a + t*a_ts + r*a_rs]
/// * b[s.b + t*b_ts + j]` for `r < R`, `j < V * L`.
struct TileArgs<T> {
    /// `R x (V * L)` accumulators, read and written back.
    acc: *mut T,
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
    /// `a * b + c`.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
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
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
        let mut out = c;
        for i in 0..PORTABLE_LANES {
            out[i] = a[i] * b[i] + c[i];
        }
        out
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
    // pointers are valid for a full vector, which the callers guarantee.
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
        let mut c = [[S::zero(); V]; R];
        for (r, row) in c.iter_mut().enumerate() {
            for (v, cv) in row.iter_mut().enumerate() {
                *cv = S::load(t.acc.add((r * V + v) * S::L));
            }
        }
        for s in std::slice::from_raw_parts(t.segs, t.nseg) {
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
                pa = pa.add(t.a_ts);
                pb = pb.add(t.b_ts);
            }
        }
        for (r, row) in c.iter().enumerate() {
            for (v, &cv) in row.iter().enumerate() {
                S::store(t.acc.add((r * V + v) * S::L), cv);
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
pub struct Tiles<T> {
    /// Lanes per vector.
    pub lanes: usize,
    /// Most rows per tile (what fits the registers with two vectors a row).
    pub rows: usize,
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

    /// Runs one tile of `rows` rows by `vecs` vectors: `acc` (`rows x vecs
    /// x lanes`, row-major) `+= sum_s sum_t a[s.a + t*a_ts + r*a_rs] *
    /// b[s.b + t*b_ts + j]`. Panics if any element it would touch lies
    /// outside the slices, or the tile shape is not supported.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        rows: usize,
        vecs: usize,
        acc: &mut [T],
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
        let width = vecs * self.lanes;
        assert!(acc.len() >= rows * width, "conv tile: accumulators too short");
        for s in segs.iter().filter(|s| s.len > 0) {
            let a_end = s.a + (s.len - 1) * a_ts + (rows - 1) * a_rs;
            let b_end = s.b + (s.len - 1) * b_ts + width - 1;
            assert!(a_end < a.len() && b_end < b.len(), "conv tile: segment {s:?} out of bounds");
        }
        let args = TileArgs {
            acc: acc.as_mut_ptr(),
            a: a.as_ptr(),
            a_rs,
            a_ts,
            b: b.as_ptr(),
            b_ts,
            segs: segs.as_ptr(),
            nseg: segs.len(),
        };
        // SAFETY: `detect` chose `f` for an instruction set this CPU has;
        // every element a segment reaches was checked to lie inside `a` and
        // `b` above (a segment of length 0 reaches none), the accumulators
        // inside `acc`, and `acc` (a unique borrow) cannot alias `a` or `b`.
        unsafe { f(&args) }
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
/// buffer and hands them over in chunks of at most [`SEG_CHUNK`].
struct SegBuf {
    segs: [Seg; SEG_CHUNK],
    len: usize,
    a_ts: usize,
    b_ts: usize,
}

impl SegBuf {
    fn new(a_ts: usize, b_ts: usize) -> Self {
        SegBuf { segs: [Seg::default(); SEG_CHUNK], len: 0, a_ts, b_ts }
    }

    /// Adds `s`; when the buffer is full, first passes it to `flush`.
    fn push(&mut self, s: Seg, flush: &mut impl FnMut(&[Seg])) {
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
            flush(&self.segs[..]);
            self.len = 0;
        }
        self.segs[self.len] = s;
        self.len += 1;
    }

    fn finish(&mut self, flush: &mut impl FnMut(&[Seg])) {
        if self.len > 0 {
            flush(&self.segs[..self.len]);
            self.len = 0;
        }
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
    for (co0, vecs) in channel_blocks(g.cout, lanes) {
        let width = vecs * lanes;
        let block = &mut panel[co0 * k..co0 * k + k * width];
        for j in 0..width {
            let co = co0 + j;
            for (tap, ci) in (0..khw).flat_map(|t| (0..g.cin).map(move |c| (t, c))) {
                let v = if co < g.cout { flush(w[(co * g.cin + ci) * khw + tap]) } else { T::ZERO };
                block[(tap * g.cin + ci) * width + j] = v;
            }
        }
    }
}

/// Packs the weight for the input gradient: per input-channel block,
/// `[kh'][kw'][co][width]` with the kernel flipped (`kh' = kh_size-1-kh`),
/// `co` padded to whole vectors, zeros past `cin` and `cout`.
pub fn pack_backward<T: Float>(g: &ConvGeom, lanes: usize, w: &[T], panel: &mut [T]) {
    let cpad = g.cout.div_ceil(lanes) * lanes;
    let khw = g.kh * g.kw;
    let kb = khw * cpad;
    assert!(w.len() >= g.cout * g.k() && panel.len() >= g.panel_t_len(lanes), "pack_backward: bad sizes");
    for (ci0, vecs) in channel_blocks(g.cin, lanes) {
        let width = vecs * lanes;
        let block = &mut panel[ci0 * kb..ci0 * kb + kb * width];
        for khp in 0..g.kh {
            for kwp in 0..g.kw {
                let tap = (g.kh - 1 - khp) * g.kw + (g.kw - 1 - kwp);
                for co in 0..cpad {
                    let row = ((khp * g.kw + kwp) * cpad + co) * width;
                    for j in 0..width {
                        let ci = ci0 + j;
                        let v = if co < g.cout && ci < g.cin {
                            flush(w[(co * g.cin + ci) * khw + tap])
                        } else {
                            T::ZERO
                        };
                        block[row + j] = v;
                    }
                }
            }
        }
    }
}

/// One sample's input `(cin, h, w)` into its padded channels-last copy
/// `(hp, wp, cin)`, zeros in the padding.
pub fn pad_input<T: Float>(g: &ConvGeom, x: &[T], xp: &mut [T]) {
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
        if cin == 1 {
            for (d, &s) in inner.iter_mut().zip(&x[ih * g.w..(ih + 1) * g.w]) {
                *d = flush(s);
            }
        } else {
            for ci in 0..cin {
                let src = &x[ci * hw + ih * g.w..ci * hw + (ih + 1) * g.w];
                for (iw, &s) in src.iter().enumerate() {
                    inner[iw * cin + ci] = flush(s);
                }
            }
        }
    }
}

/// One sample's forward pass: `y (cout, oh, ow) = act(conv(x) + bias)` from
/// its padded input `xp` and the packed weight.
#[allow(clippy::too_many_arguments)]
pub fn forward_sample<T: Float>(
    g: &ConvGeom,
    tiles: &Tiles<T>,
    xp: &[T],
    panel: &[T],
    bias: Option<&[T]>,
    act: Act,
    y: &mut [T],
) {
    let (lanes, k, cin, wp) = (tiles.lanes, g.k(), g.cin, g.wp());
    let plane = g.oh * g.ow;
    assert!(xp.len() >= g.xp_len() && y.len() >= g.cout * plane && panel.len() >= g.panel_len(lanes));
    let mut acc = [T::ZERO; 2 * 64 * MAX_ROWS];
    for (co0, vecs) in channel_blocks(g.cout, lanes) {
        let width = vecs * lanes;
        let block = &panel[co0 * k..co0 * k + k * width];
        let live = width.min(g.cout - co0);
        for oh in 0..g.oh {
            for (ow0, rows) in row_blocks(g.ow, tiles.rows) {
                let acc = &mut acc[..rows * width];
                for r in 0..rows {
                    for j in 0..width {
                        acc[r * width + j] = match bias {
                            Some(b) if j < live => b[co0 + j],
                            _ => T::ZERO,
                        };
                    }
                }
                let x = &xp[(oh * g.sh * wp + ow0 * g.sw) * cin..];
                {
                    // One segment per kernel row (per tap when dilated).
                    let mut run =
                        |segs: &[Seg]| tiles.run(rows, vecs, acc, x, g.sw * cin, 1, block, width, segs);
                    let mut sb = SegBuf::new(1, width);
                    for kh in 0..g.kh {
                        for kw in 0..g.kw {
                            let a = (kh * g.dh * wp + kw * g.dw) * cin;
                            sb.push(Seg { a, b: (kh * g.kw + kw) * cin * width, len: cin }, &mut run);
                        }
                    }
                    sb.finish(&mut run);
                }
                for j in 0..live {
                    let out = &mut y[(co0 + j) * plane + oh * g.ow + ow0..][..rows];
                    for (r, o) in out.iter_mut().enumerate() {
                        *o = act.apply(acc[r * width + j]);
                    }
                }
            }
        }
    }
}

/// One sample's output gradient `(cout, oh, ow)`, times the fused
/// activation's derivative (from the output `y`), into its channels-last
/// copy (`layout`), zeros around.
pub fn pad_grad<T: Float>(g: &ConvGeom, layout: &GradLayout, act: Act, y: &[T], dy: &[T], dz: &mut [T]) {
    let plane = g.oh * g.ow;
    let GradLayout { offh, offw, wz, cpad, .. } = *layout;
    assert!(y.len() >= g.cout * plane && dy.len() >= g.cout * plane && dz.len() >= layout.len());
    let dz = &mut dz[..layout.len()];
    if offh > 0 || offw > 0 || layout.hz > g.oh || wz > g.ow || cpad > g.cout {
        dz.fill(T::ZERO);
    }
    for co in 0..g.cout {
        for oh in 0..g.oh {
            let at = co * plane + oh * g.ow;
            let row = &mut dz[((oh + offh) * wz + offw) * cpad..];
            for ow in 0..g.ow {
                let d = if act == Act::Identity {
                    dy[at + ow]
                } else {
                    dy[at + ow] * act.derivative_at_output(y[at + ow])
                };
                row[ow * cpad + co] = flush(d);
            }
        }
    }
}

/// One sample's input gradient `dx (cin, h, w)` from its channels-last
/// output gradient `dz` (laid out by [`ConvGeom::grad_layout`] with
/// `for_dx`) and the packed, flipped weight.
pub fn input_grad_sample<T: Float>(
    g: &ConvGeom,
    tiles: &Tiles<T>,
    layout: &GradLayout,
    dz: &[T],
    panel_t: &[T],
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
                    let acc = &mut acc[..rows * width];
                    acc.fill(T::ZERO);
                    {
                        // The taps that reach this row and phase: one
                        // segment each, merged along kernel rows.
                        let z = &dz[j0 * cpad..];
                        let mut run =
                            |segs: &[Seg]| tiles.run(rows, vecs, acc, z, cpad, 1, block, width, segs);
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

/// The weight and bias gradient of samples `0..n` of `xp` and `dz` (each
/// sample's padded input and channels-last output gradient, one after the
/// other), summed in sample order into `dw` (`[kh][kw][ci][cpad]`,
/// overwritten) and `db` (`cpad`, overwritten).
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
    dw[..g.dw_len(lanes)].fill(T::ZERO);
    db[..cpad].fill(T::ZERO);
    // Row groups: rows of one group lie one element apart in the input.
    let (groups, glen) = if g.dw == 1 { (g.kh, g.kw * cin) } else { (g.kh * g.kw, cin) };
    let mut acc = [T::ZERO; 2 * 64 * MAX_ROWS];
    for s in 0..n {
        let x = &xp[s * xlen..(s + 1) * xlen];
        let z = &dz[s * zlen..(s + 1) * zlen];
        for grp in 0..groups {
            let (kh, kw) = if g.dw == 1 { (grp, 0) } else { (grp / g.kw, grp % g.kw) };
            let goff = (kh * g.dh * wp + kw * g.dw) * cin;
            for (q0, rows) in row_blocks(glen, tiles.rows) {
                let row0 = grp * glen + q0;
                for (co0, vecs) in channel_blocks(g.cout, lanes) {
                    let width = vecs * lanes;
                    let acc = &mut acc[..rows * width];
                    for r in 0..rows {
                        acc[r * width..(r + 1) * width]
                            .copy_from_slice(&dw[(row0 + r) * cpad + co0..][..width]);
                    }
                    let mut sb = SegBuf::new(g.sw * cin, cpad);
                    let mut run = |segs: &[Seg]| {
                        tiles.run(rows, vecs, acc, &x[goff + q0..], 1, g.sw * cin, z, cpad, segs)
                    };
                    for oh in 0..g.oh {
                        let seg = Seg {
                            a: oh * g.sh * wp * cin,
                            b: ((oh + offh) * wz + offw) * cpad + co0,
                            len: g.ow,
                        };
                        sb.push(seg, &mut run);
                    }
                    sb.finish(&mut run);
                    for r in 0..rows {
                        dw[(row0 + r) * cpad + co0..][..width]
                            .copy_from_slice(&acc[r * width..(r + 1) * width]);
                    }
                }
            }
        }
        for oh in 0..g.oh {
            let row = &z[((oh + offh) * wz + offw) * cpad..];
            for ow in 0..g.ow {
                for (b, &v) in db[..cpad].iter_mut().zip(&row[ow * cpad..(ow + 1) * cpad]) {
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
                let mut acc: Vec<T> = (0..rows * width).map(|i| T::from_f64(i as f64)).collect();
                let mut want = acc.clone();
                for r in 0..rows {
                    for j in 0..width {
                        for s in &segs {
                            for t in 0..s.len {
                                want[r * width + j] += a[s.a + t * a_ts + r * a_rs] * b[s.b + t * b_ts + j];
                            }
                        }
                    }
                }
                tiles.run(rows, vecs, &mut acc, &a, a_rs, a_ts, &b, b_ts, &segs);
                // Small integers: every kernel gives the exact sums.
                assert_eq!(acc, want, "{rows} x {vecs}");
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
        tiles.run(1, 1, &mut acc, &a, 1, 1, &b, 0, &[Seg { a: 5, b: 0, len: 6 }]);
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
