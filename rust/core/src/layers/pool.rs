//! Pooling on `(C, H, W)` (and `(C, L)`, run as height 1), like torch's
//! `MaxPool2d`, `AvgPool2d` (`count_include_pad=True`), `MaxPool1d`,
//! `AvgPool1d`, and a global average over `(H, W)`. Every plane is pooled
//! on its own, so work splits by plane.

use super::{numel, Backward, Forward, Layer, LayerConfig, Layout, Layouts};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::par_chunks;
use serde::{Deserialize, Serialize};

/// Declares the configuration of a pooling layer: `$size` is `[usize; 2]`
/// for 2-D pooling, `usize` for 1-D (run as height 1).
macro_rules! pool_config {
    ($(#[$doc:meta])* $config:ident, $name:literal, $kind:expr, 2) => {
        pool_config!(@struct $(#[$doc])* $config, [usize; 2]);
        impl LayerConfig for $config {
            const NAME: &'static str = $name;

            fn build<T: Float>(&self) -> Result<Box<dyn Layer<T>>> {
                Ok(Box::new(Pool::new(Self::NAME, $kind, 2, self.kernel_size, self.stride, self.padding)?))
            }
        }
    };
    ($(#[$doc:meta])* $config:ident, $name:literal, $kind:expr, 1) => {
        pool_config!(@struct $(#[$doc])* $config, usize);
        impl LayerConfig for $config {
            const NAME: &'static str = $name;

            fn build<T: Float>(&self) -> Result<Box<dyn Layer<T>>> {
                let (k, s, p) = (self.kernel_size, self.stride, self.padding);
                Ok(Box::new(Pool::new(Self::NAME, $kind, 1, [1, k], [1, s], [0, p])?))
            }
        }
    };
    (@struct $(#[$doc:meta])* $config:ident, $size:ty) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        pub struct $config {
            pub kernel_size: $size,
            pub stride: $size,
            pub padding: $size,
        }
    };
}

pool_config!(
    /// `MaxPool2D`'s configuration (`torch.nn.MaxPool2d`).
    MaxPool2DSpec,
    "MaxPool2D",
    PoolKind::Max,
    2
);
pool_config!(
    /// `AvgPool2D`'s configuration: average pooling counting the padding
    /// (torch's `count_include_pad=True`).
    AvgPool2DSpec,
    "AvgPool2D",
    PoolKind::Avg,
    2
);
pool_config!(
    /// `MaxPool1D`'s configuration (`torch.nn.MaxPool1d`).
    MaxPool1DSpec,
    "MaxPool1D",
    PoolKind::Max,
    1
);
pool_config!(
    /// `AvgPool1D`'s configuration (`torch.nn.AvgPool1d`, `count_include_pad=True`).
    AvgPool1DSpec,
    "AvgPool1D",
    PoolKind::Avg,
    1
);

/// `GlobalAvgPool2D`'s configuration (it has no arguments): the mean over
/// `(H, W)`, `(C, H, W) -> (C)`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GlobalAvgPool2DSpec {}

impl LayerConfig for GlobalAvgPool2DSpec {
    const NAME: &'static str = "GlobalAvgPool2D";

    fn build<T: Float>(&self) -> Result<Box<dyn Layer<T>>> {
        Ok(Box::new(GlobalAvgPool))
    }
}

/// Which reduction a pooling window takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Avg,
}

/// A max or average pooling layer.
#[derive(Clone, Debug)]
pub struct Pool {
    name: &'static str,
    kind: PoolKind,
    dims: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
}

/// The sizes of one pooled plane.
#[derive(Clone, Copy, Debug)]
struct Plane {
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
}

fn pair(v: [usize; 2], dims: usize) -> String {
    if dims == 1 {
        v[1].to_string()
    } else {
        format!("({}, {})", v[0], v[1])
    }
}

impl Pool {
    /// Checks the configuration (for `dims == 1`, the first entries are the
    /// unit height).
    pub fn new(
        name: &'static str,
        kind: PoolKind,
        dims: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> Result<Self> {
        for (what, v) in [("kernel_size", kernel), ("stride", stride)] {
            if v.contains(&0) {
                return Err(Error::value(format!("{name}: {what} must be >= 1, got {}", pair(v, dims))));
            }
        }
        if padding[0] > kernel[0] / 2 || padding[1] > kernel[1] / 2 {
            return Err(Error::value(format!(
                "{name}: padding must be at most half the kernel size (as in torch), got padding {} \
                 for kernel_size {}",
                pair(padding, dims),
                pair(kernel, dims)
            )));
        }
        Ok(Pool { name, kind, dims, kernel, stride, padding })
    }

    fn plane(&self, input: &[usize]) -> Result<(usize, Plane)> {
        let (c, h, w) = match (self.dims, input) {
            (1, &[c, l]) => (c, 1, l),
            (2, &[c, h, w]) => (c, h, w),
            _ => {
                let want = if self.dims == 1 { "(N, C, L)" } else { "(N, C, H, W)" };
                return Err(Error::shape(format!(
                    "{} expects inputs of shape {want}, got per-sample shape {input:?}",
                    self.name
                )));
            }
        };
        let [kh, kw] = self.kernel;
        let [ph, pw] = self.padding;
        if h + 2 * ph < kh || w + 2 * pw < kw {
            return Err(Error::shape(format!(
                "{}: kernel_size {} is larger than the padded input (per-sample shape {input:?})",
                self.name,
                pair(self.kernel, self.dims)
            )));
        }
        let oh = (h + 2 * ph - kh) / self.stride[0] + 1;
        let ow = (w + 2 * pw - kw) / self.stride[1] + 1;
        Ok((c, Plane { h, w, oh, ow }))
    }

    /// The window of output `(oh, ow)`: rows and columns inside the input.
    #[inline]
    fn window(&self, p: &Plane, oh: usize, ow: usize) -> (usize, usize, usize, usize) {
        let h0 = (oh * self.stride[0]) as isize - self.padding[0] as isize;
        let w0 = (ow * self.stride[1]) as isize - self.padding[1] as isize;
        let h1 = (h0 + self.kernel[0] as isize).min(p.h as isize) as usize;
        let w1 = (w0 + self.kernel[1] as isize).min(p.w as isize) as usize;
        (h0.max(0) as usize, h1, w0.max(0) as usize, w1)
    }

    /// The plain 2x2, stride 2, unpadded case (the usual one), vectorized.
    fn is_2x2(&self) -> bool {
        self.kernel == [2, 2] && self.stride == [2, 2] && self.padding == [0, 0]
    }

    fn forward_plane<T: Float>(&self, p: &Plane, x: &[T], y: &mut [T]) {
        if self.is_2x2() {
            return pool2x2(self.kind, p, x, y);
        }
        let area = T::from_usize(self.kernel[0] * self.kernel[1]);
        for oh in 0..p.oh {
            for ow in 0..p.ow {
                let (h0, h1, w0, w1) = self.window(p, oh, ow);
                let rows = (h0..h1).map(|h| &x[h * p.w + w0..h * p.w + w1]);
                y[oh * p.ow + ow] = match self.kind {
                    PoolKind::Max => {
                        let mut m = x[h0 * p.w + w0];
                        for row in rows {
                            for &v in row {
                                if v > m {
                                    m = v;
                                }
                            }
                        }
                        m
                    }
                    PoolKind::Avg => {
                        let mut s = T::ZERO;
                        for row in rows {
                            for &v in row {
                                s += v;
                            }
                        }
                        s / area
                    }
                };
            }
        }
    }

    /// One channels-last sample: `x (h, w, c)` into `y (oh, ow, c)`, each
    /// window's reduction vectorized over channels.
    fn forward_cl<T: Float>(&self, p: &Plane, c: usize, x: &[T], y: &mut [T]) {
        if self.is_2x2() {
            let row = p.w * c;
            for oh in 0..p.oh {
                let (r0, r1) = (&x[2 * oh * row..][..2 * p.ow * c], &x[(2 * oh + 1) * row..][..2 * p.ow * c]);
                pool2x2_cl_row(
                    self.kind == PoolKind::Max,
                    c,
                    r0,
                    r1,
                    &mut y[oh * p.ow * c..(oh + 1) * p.ow * c],
                );
            }
            return;
        }
        let area = T::ONE / T::from_usize(self.kernel[0] * self.kernel[1]);
        for oh in 0..p.oh {
            for ow in 0..p.ow {
                let (h0, h1, w0, w1) = self.window(p, oh, ow);
                let out = &mut y[(oh * p.ow + ow) * c..][..c];
                match self.kind {
                    PoolKind::Max => {
                        out.copy_from_slice(&x[(h0 * p.w + w0) * c..][..c]);
                        for h in h0..h1 {
                            for w in w0..w1 {
                                max_into(out, &x[(h * p.w + w) * c..][..c]);
                            }
                        }
                    }
                    PoolKind::Avg => {
                        out.fill(T::ZERO);
                        for h in h0..h1 {
                            for w in w0..w1 {
                                add_into(out, &x[(h * p.w + w) * c..][..c]);
                            }
                        }
                        out.iter_mut().for_each(|v| *v *= area);
                    }
                }
            }
        }
    }

    /// The gradient of [`Pool::forward_cl`] for one sample.
    fn backward_cl<T: Float>(&self, p: &Plane, c: usize, x: &[T], y: &[T], dy: &[T], dx: &mut [T]) {
        if self.is_2x2() {
            // Rows and columns past the last window get no gradient.
            if p.h > 2 * p.oh || p.w > 2 * p.ow {
                dx.fill(T::ZERO);
            }
            let row = p.w * c;
            let n = 2 * p.ow * c;
            for oh in 0..p.oh {
                let (top, bottom) = dx[2 * oh * row..(2 * oh + 2) * row].split_at_mut(row);
                let (r0, r1) = (&x[2 * oh * row..][..n], &x[(2 * oh + 1) * row..][..n]);
                let out = oh * p.ow * c..(oh + 1) * p.ow * c;
                let max = self.kind == PoolKind::Max;
                unpool2x2_cl_row(max, c, r0, r1, &y[out.clone()], &dy[out], &mut top[..n], &mut bottom[..n]);
            }
            return;
        }
        dx.fill(T::ZERO);
        let area = T::ONE / T::from_usize(self.kernel[0] * self.kernel[1]);
        // Channels not yet given their window's gradient (1) or given (0).
        let mut pending = [T::ZERO; 256];
        for oh in 0..p.oh {
            for ow in 0..p.ow {
                let (h0, h1, w0, w1) = self.window(p, oh, ow);
                let o = (oh * p.ow + ow) * c;
                for c0 in (0..c).step_by(pending.len()) {
                    let nc = pending.len().min(c - c0);
                    let (m, g) = (&y[o + c0..o + c0 + nc], &dy[o + c0..o + c0 + nc]);
                    let pend = &mut pending[..nc];
                    pend.fill(T::ONE);
                    for h in h0..h1 {
                        for w in w0..w1 {
                            let at = (h * p.w + w) * c + c0;
                            let (xs, ds) = (&x[at..at + nc], &mut dx[at..at + nc]);
                            match self.kind {
                                PoolKind::Max => first_max_grad(xs, m, g, pend, ds),
                                PoolKind::Avg => {
                                    for (d, &gi) in ds.iter_mut().zip(g) {
                                        *d += gi * area;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn backward_plane<T: Float>(&self, p: &Plane, x: &[T], y: &[T], dy: &[T], dx: &mut [T]) {
        if self.is_2x2() {
            return unpool2x2(self.kind, p, x, y, dy, dx);
        }
        dx.fill(T::ZERO);
        let area = T::from_usize(self.kernel[0] * self.kernel[1]);
        for oh in 0..p.oh {
            for ow in 0..p.ow {
                let (h0, h1, w0, w1) = self.window(p, oh, ow);
                let g = dy[oh * p.ow + ow];
                match self.kind {
                    PoolKind::Max => {
                        // The first maximum in scan order, as torch picks it.
                        let mut at = h0 * p.w + w0;
                        for h in h0..h1 {
                            for i in h * p.w + w0..h * p.w + w1 {
                                if x[i] > x[at] {
                                    at = i;
                                }
                            }
                        }
                        dx[at] += g;
                    }
                    PoolKind::Avg => {
                        let share = g / area;
                        for h in h0..h1 {
                            for v in &mut dx[h * p.w + w0..h * p.w + w1] {
                                *v += share;
                            }
                        }
                    }
                }
            }
        }
    }
}

crate::multiversion! {
    /// One output row of 2x2, stride-2 pooling on channels-last rows: `r0`
    /// and `r1` hold the two input rows (`2 * ow` positions of `c`
    /// channels), `out` the `ow` outputs.
    fn pool2x2_cl_row<T: Float>(max: bool, c: usize, r0: &[T], r1: &[T], out: &mut [T]) {
        let quarter = T::from_f64(0.25);
        for ((o, a), b) in out.chunks_exact_mut(c).zip(r0.chunks_exact(2 * c)).zip(r1.chunks_exact(2 * c)) {
            let (a0, a1) = a.split_at(c);
            let (b0, b1) = b.split_at(c);
            for ((((o, &p), &q), &r), &s) in o.iter_mut().zip(a0).zip(a1).zip(b0).zip(b1) {
                *o = if max {
                    let m0 = if q > p { q } else { p };
                    let m1 = if s > r { s } else { r };
                    if m1 > m0 { m1 } else { m0 }
                } else {
                    (p + q + r + s) * quarter
                };
            }
        }
    }
}

crate::multiversion! {
    /// The gradient of [`pool2x2_cl_row`]: for max pooling all of each
    /// window's gradient to its first maximum in scan order (found by
    /// comparing with the output `y`), for the mean a quarter to each input.
    fn unpool2x2_cl_row<T: Float>(
        max: bool,
        c: usize,
        r0: &[T],
        r1: &[T],
        y: &[T],
        g: &[T],
        d0: &mut [T],
        d1: &mut [T],
    ) {
        let zero = T::ZERO;
        let quarter = T::from_f64(0.25);
        let windows = r0.chunks_exact(2 * c).zip(r1.chunks_exact(2 * c)).zip(d0.chunks_exact_mut(2 * c)).zip(d1.chunks_exact_mut(2 * c));
        for ((((a, b), da), db), (ym, gw)) in windows.zip(y.chunks_exact(c).zip(g.chunks_exact(c))) {
            let (a0, a1) = a.split_at(c);
            let (b0, _) = b.split_at(c);
            let (da0, da1) = da.split_at_mut(c);
            let (db0, db1) = db.split_at_mut(c);
            for j in 0..c {
                let (m, gi) = (ym[j], gw[j]);
                if max {
                    let s0 = a0[j] == m;
                    let s1 = !s0 && a1[j] == m;
                    let s2 = !s0 && !s1 && b0[j] == m;
                    let s3 = !s0 && !s1 && !s2;
                    da0[j] = if s0 { gi } else { zero };
                    da1[j] = if s1 { gi } else { zero };
                    db0[j] = if s2 { gi } else { zero };
                    db1[j] = if s3 { gi } else { zero };
                } else {
                    let v = gi * quarter;
                    da0[j] = v;
                    da1[j] = v;
                    db0[j] = v;
                    db1[j] = v;
                }
            }
        }
    }
}

crate::multiversion! {
    /// `out = max(out, v)` elementwise.
    fn max_into<T: Float>(out: &mut [T], v: &[T]) {
        for (o, &x) in out.iter_mut().zip(v) {
            if x > *o {
                *o = x;
            }
        }
    }
}

crate::multiversion! {
    /// `out += v` elementwise.
    fn add_into<T: Float>(out: &mut [T], v: &[T]) {
        for (o, &x) in out.iter_mut().zip(v) {
            *o += x;
        }
    }
}

crate::multiversion! {
    /// One window position of the max-pooling gradient: where `x` equals the
    /// window's maximum `m` and the channel is still `pending`, the
    /// gradient `g` goes here (the first maximum in scan order, as torch).
    fn first_max_grad<T: Float>(x: &[T], m: &[T], g: &[T], pending: &mut [T], dx: &mut [T]) {
        for ((((&xi, &mi), &gi), p), d) in x.iter().zip(m).zip(g).zip(pending.iter_mut()).zip(dx.iter_mut()) {
            let hit = xi == mi && *p != T::ZERO;
            *d += if hit { gi } else { T::ZERO };
            *p = if hit { T::ZERO } else { *p };
        }
    }
}

crate::multiversion! {
    /// 2x2 windows, stride 2: each output from two input rows.
    fn pool2x2_rows<T: Float>(max: bool, r0: &[T], r1: &[T], out: &mut [T]) {
        let quarter = T::from_f64(0.25);
        for ((o, a), b) in out.iter_mut().zip(r0.chunks_exact(2)).zip(r1.chunks_exact(2)) {
            *o = if max {
                let m0 = if a[1] > a[0] { a[1] } else { a[0] };
                let m1 = if b[1] > b[0] { b[1] } else { b[0] };
                if m1 > m0 { m1 } else { m0 }
            } else {
                (a[0] + a[1] + b[0] + b[1]) * quarter
            };
        }
    }
}

fn pool2x2<T: Float>(kind: PoolKind, p: &Plane, x: &[T], y: &mut [T]) {
    let max = kind == PoolKind::Max;
    let fast = crate::kernels::pool2x2::available::<T>();
    for oh in 0..p.oh {
        let r0 = &x[2 * oh * p.w..][..2 * p.ow];
        let r1 = &x[(2 * oh + 1) * p.w..][..2 * p.ow];
        let out = &mut y[oh * p.ow..(oh + 1) * p.ow];
        if fast {
            crate::kernels::pool2x2::forward(max, r0, r1, out);
        } else {
            pool2x2_rows(max, r0, r1, out);
        }
    }
}

crate::multiversion! {
    /// The gradient of one row of 2x2 windows: for max pooling, all of
    /// each window's gradient to its first maximum in scan order (torch's
    /// choice), found by comparing with the forward output `y`.
    fn unpool2x2_rows<T: Float>(
        max: bool,
        x0: &[T],
        x1: &[T],
        y: &[T],
        g: &[T],
        d0: &mut [T],
        d1: &mut [T],
    ) {
        let zero = T::ZERO;
        let quarter = T::from_f64(0.25);
        let rows = x0.chunks_exact(2).zip(x1.chunks_exact(2)).zip(d0.chunks_exact_mut(2)).zip(d1.chunks_exact_mut(2));
        for ((((a, b), da), db), (&m, &gi)) in rows.zip(y.iter().zip(g)) {
            if max {
                let s0 = a[0] == m;
                let s1 = !s0 && a[1] == m;
                let s2 = !s0 && !s1 && b[0] == m;
                let s3 = !s0 && !s1 && !s2;
                da[0] = if s0 { gi } else { zero };
                da[1] = if s1 { gi } else { zero };
                db[0] = if s2 { gi } else { zero };
                db[1] = if s3 { gi } else { zero };
            } else {
                let s = gi * quarter;
                da[0] = s;
                da[1] = s;
                db[0] = s;
                db[1] = s;
            }
        }
    }
}

fn unpool2x2<T: Float>(kind: PoolKind, p: &Plane, x: &[T], y: &[T], dy: &[T], dx: &mut [T]) {
    // Rows and columns past the last window get no gradient.
    if p.h > 2 * p.oh || p.w > 2 * p.ow {
        dx.fill(T::ZERO);
    }
    let max = kind == PoolKind::Max;
    let fast = crate::kernels::pool2x2::available::<T>();
    for oh in 0..p.oh {
        let (top, bottom) = dx[2 * oh * p.w..(2 * oh + 2) * p.w].split_at_mut(p.w);
        let (x0, x1) = (&x[2 * oh * p.w..][..2 * p.ow], &x[(2 * oh + 1) * p.w..][..2 * p.ow]);
        let out = oh * p.ow..(oh + 1) * p.ow;
        let (d0, d1) = (&mut top[..2 * p.ow], &mut bottom[..2 * p.ow]);
        if fast {
            crate::kernels::pool2x2::backward(max, x0, x1, &y[out.clone()], &dy[out], d0, d1);
        } else {
            unpool2x2_rows(max, x0, x1, &y[out.clone()], &dy[out], d0, d1);
        }
    }
}

impl<T: Float> Layer<T> for Pool {
    fn name(&self) -> &'static str {
        self.name
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        let (c, p) = self.plane(input)?;
        Ok(if self.dims == 1 { vec![c, p.ow] } else { vec![c, p.oh, p.ow] })
    }

    fn flops(&self, in_shape: &[usize]) -> usize {
        2 * numel(in_shape)
    }

    fn layouts(&self) -> Layouts {
        Layouts::Preserve
    }

    fn forward(&self, f: Forward<'_, T>) {
        let Ok((c, p)) = self.plane(f.in_shape) else { return };
        let x = f.x;
        let (ilen, olen) = (p.h * p.w, p.oh * p.ow);
        if f.in_layout == Layout::ChannelsLast {
            par_chunks(&mut f.y[..f.n * c * olen], c * olen, |i, y| {
                self.forward_cl(&p, c, &x[i * c * ilen..(i + 1) * c * ilen], y);
            });
            return;
        }
        let planes = f.n * c;
        par_chunks(&mut f.y[..planes * olen], olen, |i, y| {
            self.forward_plane(&p, &x[i * ilen..(i + 1) * ilen], y);
        });
    }

    fn backward(&self, b: Backward<'_, T>) {
        let Some(dx) = b.dx else { return };
        let Ok((c, p)) = self.plane(b.in_shape) else { return };
        if b.in_layout == Layout::ChannelsLast {
            let (x, y, dy) = (b.x, b.y, &*b.dy);
            let (ilen, olen) = (c * p.h * p.w, c * p.oh * p.ow);
            par_chunks(&mut dx[..b.n * ilen], ilen, |i, dx| {
                let out = i * olen..(i + 1) * olen;
                self.backward_cl(&p, c, &x[i * ilen..(i + 1) * ilen], &y[out.clone()], &dy[out], dx);
            });
            return;
        }
        let planes = b.n * c;
        let (x, y, dy) = (b.x, b.y, &*b.dy);
        let (ilen, olen) = (p.h * p.w, p.oh * p.ow);
        par_chunks(&mut dx[..planes * ilen], ilen, |i, dx| {
            let out = i * olen..(i + 1) * olen;
            self.backward_plane(&p, &x[i * ilen..(i + 1) * ilen], &y[out.clone()], &dy[out], dx);
        });
    }
}

/// The mean of each channel's plane: `(C, H, W) -> (C)`.
#[derive(Clone, Debug)]
pub struct GlobalAvgPool;

impl<T: Float> Layer<T> for GlobalAvgPool {
    fn name(&self) -> &'static str {
        "GlobalAvgPool2D"
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        match *input {
            [c, h, w] if h * w > 0 => Ok(vec![c]),
            _ => Err(Error::shape(format!(
                "GlobalAvgPool2D expects inputs of shape (N, C, H, W), got per-sample shape {input:?}"
            ))),
        }
    }

    fn layouts(&self) -> Layouts {
        Layouts::Flatten
    }

    fn forward(&self, f: Forward<'_, T>) {
        let hw = numel(&f.in_shape[1..]);
        let x = f.x;
        let inv = T::ONE / T::from_usize(hw);
        if f.in_layout == Layout::ChannelsLast {
            let c = f.in_shape[0];
            par_chunks(&mut f.y[..f.n * c], c, |i, y| {
                y.fill(T::ZERO);
                for pos in x[i * c * hw..(i + 1) * c * hw].chunks_exact(c) {
                    add_into(y, pos);
                }
                y.iter_mut().for_each(|v| *v *= inv);
            });
            return;
        }
        let planes = f.n * f.in_shape[0];
        par_chunks(&mut f.y[..planes], 256, |i, y| {
            for (j, o) in y.iter_mut().enumerate() {
                let p = (i * 256 + j) * hw;
                let mut s = T::ZERO;
                for &v in &x[p..p + hw] {
                    s += v;
                }
                *o = s * inv;
            }
        });
    }

    fn backward(&self, b: Backward<'_, T>) {
        let Some(dx) = b.dx else { return };
        let hw = numel(&b.in_shape[1..]);
        let planes = b.n * b.in_shape[0];
        let inv = T::ONE / T::from_usize(hw);
        let dy = &*b.dy;
        if b.in_layout == Layout::ChannelsLast {
            let c = b.in_shape[0];
            par_chunks(&mut dx[..b.n * c * hw], c * hw, |i, d| {
                let g = &dy[i * c..(i + 1) * c];
                for pos in d.chunks_exact_mut(c) {
                    for (o, &gi) in pos.iter_mut().zip(g) {
                        *o = gi * inv;
                    }
                }
            });
            return;
        }
        par_chunks(&mut dx[..planes * hw], hw, |i, d| d.fill(dy[i] * inv));
    }
}
