//! Batch normalization, like `torch.nn.BatchNorm1d` (on `(C)` or `(C, L)`)
//! and `BatchNorm2d` (on `(C, H, W)`): in training, each channel is
//! normalized with its batch mean and biased variance and the running
//! statistics move toward them (the variance's unbiased estimate, as
//! torch); in evaluation the running statistics are used. Parameters
//! `weight` (gamma) and `bias` (beta); buffers `running_mean`,
//! `running_var`, `num_batches_tracked`.
//!
//! Sums run in float64 over each channel in sample order, so they do not
//! depend on how channels are split across threads.

use super::{
    de_float, de_opt_float, Backward, BufferDecl, BufferKind, Buffers, Forward, Layer, LayerConfig, ParamDecl,
};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::par_chunks;
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

/// Declares a batch normalization's configuration, for `$dims` spatial
/// dimensions.
macro_rules! batchnorm_config {
    ($(#[$doc:meta])* $config:ident, $name:literal, $dims:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        pub struct $config {
            pub num_features: usize,
            #[serde(deserialize_with = "de_float")]
            pub eps: f64,
            /// `None`: a cumulative average.
            #[serde(deserialize_with = "de_opt_float")]
            pub momentum: Option<f64>,
        }

        impl LayerConfig for $config {
            const NAME: &'static str = $name;

            fn build<T: Float>(&self) -> Result<Box<dyn Layer<T>>> {
                Ok(Box::new(BatchNorm::new(Self::NAME, $dims, self.num_features, self.eps, self.momentum)?))
            }
        }
    };
}

batchnorm_config!(
    /// `BatchNorm1D`'s configuration: `torch.nn.BatchNorm1d` on `(C)` or
    /// `(C, L)`; `momentum: None` is a cumulative average.
    BatchNorm1DSpec,
    "BatchNorm1D",
    1
);
batchnorm_config!(
    /// `BatchNorm2D`'s configuration: `torch.nn.BatchNorm2d` on `(C, H, W)`.
    BatchNorm2DSpec,
    "BatchNorm2D",
    2
);

/// Channels per parallel chunk of the per-channel sums.
const CHANNEL_CHUNK: usize = 8;

/// A batch normalization layer over `num_features` channels.
#[derive(Clone, Debug)]
pub struct BatchNorm {
    name: &'static str,
    dims: usize,
    pub num_features: usize,
    pub eps: f64,
    /// `None`: a cumulative average (weight `1 / num_batches_tracked`).
    pub momentum: Option<f64>,
}

impl BatchNorm {
    pub fn new(
        name: &'static str,
        dims: usize,
        num_features: usize,
        eps: f64,
        momentum: Option<f64>,
    ) -> Result<Self> {
        if num_features == 0 {
            return Err(Error::value(format!("{name}: num_features must be >= 1, got 0")));
        }
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::value(format!("{name}: eps must be a finite value > 0, got {eps}")));
        }
        if let Some(m) = momentum {
            if !(0.0..=1.0).contains(&m) {
                return Err(Error::value(format!("{name}: momentum must be in [0, 1] (or None), got {m}")));
            }
        }
        Ok(BatchNorm { name, dims, num_features, eps, momentum })
    }

    /// Values per channel per sample (the spatial size), or why the shape
    /// does not fit.
    fn spatial(&self, input: &[usize]) -> Result<usize> {
        let c = self.num_features;
        let ok = match (self.dims, input) {
            (1, [f]) | (1, [f, _]) | (2, [f, _, _]) => *f == c,
            _ => false,
        };
        if !ok {
            let want =
                if self.dims == 1 { format!("(N, {c}) or (N, {c}, L)") } else { format!("(N, {c}, H, W)") };
            return Err(Error::shape(format!(
                "{}({c}) expects inputs of shape {want}, got per-sample shape {input:?}",
                self.name
            )));
        }
        Ok(input[1..].iter().product())
    }
}

/// Per-channel statistics kept in the scratch, 4 values a channel:
/// mean, 1 / std, and two more (the unbiased variance after a training
/// forward pass; the sums of `dy` and `dy * xhat` in the backward pass).
const STATS: usize = 4;

/// Lanes of the float64 sums: eight independent accumulators (a fixed
/// order, so results do not depend on anything but the data), added up at
/// the end; one dependent chain would cost an add's latency per element.
const LANES: usize = 8;

fn finish(acc: [f64; LANES]) -> f64 {
    acc.iter().sum()
}

crate::multiversion! {
    /// `out[0] += sum(x)`, in float64.
    fn sum_into<T: Float>(x: &[T], out: &mut [f64; LANES]) {
        let chunks = x.chunks_exact(LANES);
        let tail = chunks.remainder();
        for c in chunks {
            for (a, &v) in out.iter_mut().zip(c) {
                *a += v.to_f64();
            }
        }
        for (a, &v) in out.iter_mut().zip(tail) {
            *a += v.to_f64();
        }
    }
}

crate::multiversion! {
    /// `out += sum((x - mean)^2)`, in float64.
    fn sq_dev_into<T: Float>(x: &[T], mean: f64, out: &mut [f64; LANES]) {
        let chunks = x.chunks_exact(LANES);
        let tail = chunks.remainder();
        for c in chunks {
            for (a, &v) in out.iter_mut().zip(c) {
                let d = v.to_f64() - mean;
                *a += d * d;
            }
        }
        for (a, &v) in out.iter_mut().zip(tail) {
            let d = v.to_f64() - mean;
            *a += d * d;
        }
    }
}

crate::multiversion! {
    /// `sd += sum(dy)`, `sdx += sum(dy * (x - mean) * inv)`, in float64.
    fn grad_sums_into<T: Float>(dy: &[T], x: &[T], mean: T, inv: T, sd: &mut [f64; LANES], sdx: &mut [f64; LANES]) {
        let n = dy.len().min(x.len());
        let whole = n - n % LANES;
        for (g, v) in dy[..whole].chunks_exact(LANES).zip(x[..whole].chunks_exact(LANES)) {
            for j in 0..LANES {
                let gj = g[j].to_f64();
                sd[j] += gj;
                sdx[j] += gj * ((v[j] - mean) * inv).to_f64();
            }
        }
        for j in 0..n - whole {
            let gj = dy[whole + j].to_f64();
            sd[j] += gj;
            sdx[j] += gj * ((x[whole + j] - mean) * inv).to_f64();
        }
    }
}

/// Rows per parallel task of the elementwise passes: about 16K elements,
/// so that small rows (BatchNorm1D on `(N, C)`) are not one task each.
fn rows_per_task(per: usize) -> usize {
    (16_384 / per.max(1)).max(1)
}

/// Channels per task of the row-major statistics of `(N, C)` inputs.
const ROW_CHUNK: usize = 64;

/// The training statistics of `(N, C)` inputs (one value per channel and
/// row), row by row so the loads are contiguous: per channel the same
/// float64 sums, in the same order (rows ascending), as [`per_channel`]
/// with [`sum_into`]/[`sq_dev_into`] on one-element slices, so the bits do
/// not depend on the path.
fn stats_rows<T: Float>(x: &[T], n: usize, c: usize, stats: &mut [T], eps: f64) {
    let cnt = n as f64;
    par_chunks(&mut stats[..c * STATS], ROW_CHUNK * STATS, |i, chunk| {
        let (c0, k) = (i * ROW_CHUNK, chunk.len() / STATS);
        let mut sum = [0.0f64; ROW_CHUNK];
        for row in 0..n {
            let xr = &x[row * c + c0..row * c + c0 + k];
            for (a, &v) in sum.iter_mut().zip(xr) {
                *a += v.to_f64();
            }
        }
        let mut mean = [0.0f64; ROW_CHUNK];
        for (m, &a) in mean.iter_mut().zip(&sum[..k]) {
            *m = finish(lane0(a)) / cnt;
        }
        let mut sq = [0.0f64; ROW_CHUNK];
        for row in 0..n {
            let xr = &x[row * c + c0..row * c + c0 + k];
            for ((a, &v), &m) in sq.iter_mut().zip(xr).zip(&mean) {
                let d = v.to_f64() - m;
                *a += d * d;
            }
        }
        for (j, st) in chunk.chunks_exact_mut(STATS).enumerate() {
            let sq = finish(lane0(sq[j]));
            let var = sq / cnt;
            st[0] = T::from_f64(mean[j]);
            st[1] = T::from_f64(1.0 / (var + eps).sqrt());
            st[2] = T::from_f64(if cnt > 1.0 { sq / (cnt - 1.0) } else { 0.0 });
        }
    });
}

/// The backward sums of `(N, C)` inputs, row by row, bitwise as
/// [`grad_sums_into`] on one-element slices.
fn grad_sums_rows<T: Float>(dy: &[T], x: &[T], n: usize, c: usize, stats: &mut [T]) {
    par_chunks(&mut stats[..c * STATS], ROW_CHUNK * STATS, |i, chunk| {
        let (c0, k) = (i * ROW_CHUNK, chunk.len() / STATS);
        let (mut mean, mut inv) = ([T::ZERO; ROW_CHUNK], [T::ZERO; ROW_CHUNK]);
        for (j, st) in chunk.chunks_exact(STATS).enumerate() {
            (mean[j], inv[j]) = (st[0], st[1]);
        }
        let (mut sd, mut sdx) = ([0.0f64; ROW_CHUNK], [0.0f64; ROW_CHUNK]);
        for row in 0..n {
            let r = row * c + c0..row * c + c0 + k;
            for j in 0..k {
                let g = dy[r.start + j].to_f64();
                sd[j] += g;
                sdx[j] += g * ((x[r.start + j] - mean[j]) * inv[j]).to_f64();
            }
        }
        for (j, st) in chunk.chunks_exact_mut(STATS).enumerate() {
            st[2] = T::from_f64(finish(lane0(sd[j])));
            st[3] = T::from_f64(finish(lane0(sdx[j])));
        }
    });
}

/// `[a, 0, 0, ...]`: what [`sum_into`] accumulates from one-element slices.
fn lane0(a: f64) -> [f64; LANES] {
    let mut acc = [0.0; LANES];
    acc[0] = a;
    acc
}

/// `f(channel, stats of that channel)` over all channels, split into
/// fixed chunks of channels across threads.
fn per_channel<T: Float>(stats: &mut [T], c: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    par_chunks(&mut stats[..c * STATS], CHANNEL_CHUNK * STATS, |i, chunk| {
        for (j, st) in chunk.chunks_exact_mut(STATS).enumerate() {
            f(i * CHANNEL_CHUNK + j, st);
        }
    });
}

impl<T: Float> Layer<T> for BatchNorm {
    fn name(&self) -> &'static str {
        self.name
    }

    fn params(&self) -> Vec<ParamDecl> {
        let c = self.num_features;
        vec![ParamDecl { name: "weight", shape: vec![c] }, ParamDecl { name: "bias", shape: vec![c] }]
    }

    fn buffers(&self) -> Vec<BufferDecl> {
        let c = self.num_features;
        vec![
            BufferDecl { name: "running_mean", shape: vec![c], kind: BufferKind::Float },
            BufferDecl { name: "running_var", shape: vec![c], kind: BufferKind::Float },
            BufferDecl { name: "num_batches_tracked", shape: vec![], kind: BufferKind::Count },
        ]
    }

    fn init_params(&self, params: &mut [T], _rng: &mut Rng) {
        let (w, b) = params.split_at_mut(self.num_features);
        w.fill(T::ONE);
        b.fill(T::ZERO);
    }

    fn init_buffers(&self, values: &mut [T], counts: &mut [i64]) {
        let (mean, var) = values.split_at_mut(self.num_features);
        mean.fill(T::ZERO);
        var.fill(T::ONE);
        counts.fill(0);
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        self.spatial(input)?;
        Ok(input.to_vec())
    }

    fn check_batch(&self, n: usize, in_shape: &[usize], training: bool) -> Result<()> {
        let s = self.spatial(in_shape)?;
        if training && n * s <= 1 {
            let mut shape = vec![n];
            shape.extend_from_slice(in_shape);
            return Err(Error::value(format!(
                "{}: expected more than 1 value per channel when training, got input shape {shape:?}",
                self.name
            )));
        }
        Ok(())
    }

    fn scratch_len(&self, _n: usize, _in_shape: &[usize], _training: bool) -> usize {
        STATS * self.num_features
    }

    fn flops(&self, in_shape: &[usize]) -> usize {
        10 * in_shape.iter().product::<usize>()
    }

    fn forward(&self, f: Forward<'_, T>) {
        let Ok(s) = self.spatial(f.in_shape) else { return };
        let (c, n, x) = (self.num_features, f.n, f.x);
        let (gamma, beta) = f.params.split_at(c);
        let stats = &mut f.scratch[..c * STATS];
        let at = move |row: usize, ch: usize| row * c * s + ch * s;
        if f.training {
            let cnt = (n * s) as f64;
            let eps = self.eps;
            // Two passes in float64 over each channel: mean, then squared deviations.
            if s == 1 {
                stats_rows(x, n, c, stats, eps);
            } else {
                per_channel(stats, c, |ch, st| {
                    let mut acc = [0.0f64; LANES];
                    for row in 0..n {
                        sum_into(&x[at(row, ch)..at(row, ch) + s], &mut acc);
                    }
                    let mean = finish(acc) / cnt;
                    let mut acc = [0.0f64; LANES];
                    for row in 0..n {
                        sq_dev_into(&x[at(row, ch)..at(row, ch) + s], mean, &mut acc);
                    }
                    let sq = finish(acc);
                    let var = sq / cnt;
                    st[0] = T::from_f64(mean);
                    st[1] = T::from_f64(1.0 / (var + eps).sqrt());
                    st[2] = T::from_f64(if cnt > 1.0 { sq / (cnt - 1.0) } else { 0.0 });
                });
            }
            if let Buffers::Update { values, counts } = f.buffers {
                counts[0] = counts[0].saturating_add(1);
                let m = self.momentum.unwrap_or(1.0 / counts[0] as f64);
                let (rm, rv) = values.split_at_mut(c);
                for (ch, st) in stats.chunks_exact(STATS).enumerate() {
                    rm[ch] = T::from_f64((1.0 - m) * rm[ch].to_f64() + m * st[0].to_f64());
                    rv[ch] = T::from_f64((1.0 - m) * rv[ch].to_f64() + m * st[2].to_f64());
                }
            }
        } else {
            let values = f.buffers.values();
            let (rm, rv) = values.split_at(c);
            for (ch, st) in stats.chunks_exact_mut(STATS).enumerate() {
                st[0] = rm[ch];
                st[1] = T::from_f64(1.0 / (rv[ch].to_f64() + self.eps).sqrt());
            }
        }
        let stats = &*stats;
        let per = c * s;
        let rows = rows_per_task(per);
        par_chunks(&mut f.y[..n * per], rows * per, |i, y| {
            for (k, y) in y.chunks_exact_mut(per).enumerate() {
                let row = i * rows + k;
                for ch in 0..c {
                    let (mean, inv) = (stats[ch * STATS], stats[ch * STATS + 1]);
                    let (scale, shift) = (inv * gamma[ch], beta[ch]);
                    let src = &x[at(row, ch)..at(row, ch) + s];
                    for (o, &v) in y[ch * s..(ch + 1) * s].iter_mut().zip(src) {
                        *o = (v - mean) * scale + shift;
                    }
                }
            }
        });
    }

    fn backward(&self, b: Backward<'_, T>) {
        let Ok(s) = self.spatial(b.in_shape) else { return };
        let (c, n, x, dy) = (self.num_features, b.n, b.x, &*b.dy);
        let gamma = &b.params[..c];
        let stats = &mut b.scratch[..c * STATS];
        let at = move |row: usize, ch: usize| row * c * s + ch * s;
        // Per channel: sum of dy (beta's gradient) and of dy * xhat (gamma's).
        if s == 1 {
            grad_sums_rows(dy, x, n, c, stats);
        } else {
            per_channel(stats, c, |ch, st| {
                let (mean, inv) = (st[0], st[1]);
                let (mut sd, mut sdx) = ([0.0f64; LANES], [0.0f64; LANES]);
                for row in 0..n {
                    let r = at(row, ch)..at(row, ch) + s;
                    grad_sums_into(&dy[r.clone()], &x[r], mean, inv, &mut sd, &mut sdx);
                }
                st[2] = T::from_f64(finish(sd));
                st[3] = T::from_f64(finish(sdx));
            });
        }
        let (gw, gb) = b.grads.split_at_mut(c);
        for (ch, st) in stats.chunks_exact(STATS).enumerate() {
            let (dgamma, dbeta) = (st[3], st[2]);
            gw[ch] = if b.accumulate { gw[ch] + dgamma } else { dgamma };
            gb[ch] = if b.accumulate { gb[ch] + dbeta } else { dbeta };
        }
        let Some(dx) = b.dx else { return };
        let stats = &*stats;
        let cnt = T::from_usize(n * s);
        let per = c * s;
        // dx = gamma / std / cnt * (cnt * dy - sum dy - xhat * sum dy*xhat)
        let rows = rows_per_task(per);
        par_chunks(&mut dx[..n * per], rows * per, |i, d| {
            for (j, d) in d.chunks_exact_mut(per).enumerate() {
                let row = i * rows + j;
                for ch in 0..c {
                    let st = &stats[ch * STATS..(ch + 1) * STATS];
                    let (mean, inv, sd, sdx) = (st[0], st[1], st[2], st[3]);
                    let k = gamma[ch] * inv / cnt;
                    let r = at(row, ch)..at(row, ch) + s;
                    for ((o, &g), &v) in d[ch * s..(ch + 1) * s].iter_mut().zip(&dy[r.clone()]).zip(&x[r]) {
                        let xhat = (v - mean) * inv;
                        *o = k * (cnt * g - sd - xhat * sdx);
                    }
                }
            }
        });
    }
}
