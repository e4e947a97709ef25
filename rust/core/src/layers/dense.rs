//! Fully connected layer, `y = act(x W^T + b)`, with `W` stored `(out, in)`
//! as in `torch.nn.Linear`. A following elementwise activation whose
//! derivative is a function of its output (ReLU, LeakyReLU, Sigmoid, Tanh) is
//! fused: applied in the matrix product's output pass, and differentiated in
//! the same pass that reduces the bias gradient.

use super::{numel, Backward, Forward, Layer, LayerConfig, ParamDecl};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::activation::{forward_inplace, Act};
use crate::kernels::gemm::{gemm, gemm_ldb, gemm_rows, pad_rows, padded_ld, plan, Split};
use crate::kernels::reduce::{act_backward_bias, col_sums};
use crate::kernels::{for_row_chunks, par_rows};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

const INIT_NAMES: &str = "\"he\", \"xavier\", \"lecun\", \"zeros\"";

/// Weight initialisation scheme. Biases always start at zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// He (Kaiming) normal: `N(0, 2 / fan_in)`; for ReLU networks.
    #[default]
    He,
    /// Xavier (Glorot) uniform: `U(-a, a)`, `a = sqrt(6 / (fan_in + fan_out))`.
    Xavier,
    /// LeCun normal: `N(0, 1 / fan_in)`.
    Lecun,
    /// All zeros.
    Zeros,
}

impl Init {
    /// Parses `"he"`, `"xavier"`, `"lecun"` or `"zeros"`.
    pub fn parse(name: &str) -> Result<Init> {
        match name {
            "he" => Ok(Init::He),
            "xavier" => Ok(Init::Xavier),
            "lecun" => Ok(Init::Lecun),
            "zeros" => Ok(Init::Zeros),
            other => Err(Error::value(format!("unknown init {other:?}; expected one of {INIT_NAMES}"))),
        }
    }

    /// The name [`Init::parse`] reads.
    pub fn name(self) -> &'static str {
        match self {
            Init::He => "he",
            Init::Xavier => "xavier",
            Init::Lecun => "lecun",
            Init::Zeros => "zeros",
        }
    }

    /// Fills a weight with this scheme for the given fans (for a
    /// convolution: `fan_in = in_channels * kernel area`,
    /// `fan_out = out_channels * kernel area`, as torch computes them).
    pub fn fill<T: Float>(self, w: &mut [T], fan_in: usize, fan_out: usize, rng: &mut Rng) {
        let (fan_in, fan_out) = (fan_in as f64, fan_out as f64);
        match self {
            Init::He | Init::Lecun => {
                let gain = if self == Init::He { 2.0 } else { 1.0 };
                let std = (gain / fan_in).sqrt();
                w.iter_mut().for_each(|v| *v = T::from_f64(rng.normal() * std));
            }
            Init::Xavier => {
                let a = (6.0 / (fan_in + fan_out)).sqrt();
                w.iter_mut().for_each(|v| *v = T::from_f64((2.0 * rng.uniform() - 1.0) * a));
            }
            Init::Zeros => w.fill(T::ZERO),
        }
    }
}

impl<'de> Deserialize<'de> for Init {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let parsed = match &v {
            serde_json::Value::String(s) => Init::parse(s),
            other => Err(Error::value(format!("unknown init {other}; expected one of {INIT_NAMES}"))),
        };
        parsed.map_err(|e| serde::de::Error::custom(e.message))
    }
}

/// A dense (linear) layer.
#[derive(Clone, Debug)]
pub struct Dense {
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
    pub init: Init,
    /// Activation fused into the output pass (`Identity` when none).
    pub act: Act,
}

/// `Dense`'s configuration: `torch.nn.Linear`'s arguments, plus `init`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DenseSpec {
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
    pub init: Init,
}

impl LayerConfig for DenseSpec {
    const NAME: &'static str = "Dense";

    fn build<T: Float>(&self) -> Result<Box<dyn Layer<T>>> {
        Ok(Box::new(Dense::new(self.in_features, self.out_features, self.bias, self.init)?))
    }
}

/// Least rows (samples) for which the forward product copies the weight
/// into padded rows. The copy reads and writes the whole weight once, about
/// as long as a few rows of product take, and padding saves about a third of
/// the product's time (see `padded_ld`), so it pays only for batches of a
/// few dozen rows or more; single-sample `predict` calls skip it.
const PAD_MIN_ROWS: usize = 32;

impl Dense {
    pub fn new(in_features: usize, out_features: usize, bias: bool, init: Init) -> Result<Self> {
        for (name, v) in [("in_features", in_features), ("out_features", out_features)] {
            if v == 0 {
                return Err(Error::value(format!("Dense: {name} must be >= 1, got 0")));
            }
        }
        Ok(Dense { in_features, out_features, bias, init, act: Act::Identity })
    }

    fn weight_len(&self) -> usize {
        self.in_features * self.out_features
    }

    /// Rows of the matrix products for `n` samples of shape `shape`:
    /// leading per-sample dimensions act as extra rows.
    fn rows(n: usize, shape: &[usize]) -> usize {
        n * numel(&shape[..shape.len().saturating_sub(1)])
    }

    /// The padded row stride of the forward product's weight copy, when
    /// `rows` rows make it pay ([`padded_ld`], [`PAD_MIN_ROWS`]).
    fn pad_ld<T>(&self, rows: usize) -> Option<usize> {
        padded_ld::<T>(self.in_features).filter(|_| rows >= PAD_MIN_ROWS)
    }
}

impl<T: Float> Layer<T> for Dense {
    fn name(&self) -> &'static str {
        "Dense"
    }

    fn params(&self) -> Vec<ParamDecl> {
        let mut v = vec![ParamDecl { name: "weight", shape: vec![self.out_features, self.in_features] }];
        if self.bias {
            v.push(ParamDecl { name: "bias", shape: vec![self.out_features] });
        }
        v
    }

    fn init_params(&self, params: &mut [T], rng: &mut Rng) {
        let (w, b) = params.split_at_mut(self.weight_len());
        self.init.fill(w, self.in_features, self.out_features, rng);
        b.fill(T::ZERO);
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        match input.last() {
            Some(&f) if f == self.in_features => {
                let mut out = input.to_vec();
                if let Some(last) = out.last_mut() {
                    *last = self.out_features;
                }
                Ok(out)
            }
            _ => Err(Error::shape(format!(
                "Dense({}, {}) expects inputs whose last dimension is {}, got per-sample shape {:?}",
                self.in_features, self.out_features, self.in_features, input
            ))),
        }
    }

    fn acts_on_last_dim(&self) -> bool {
        true
    }

    fn scratch_len(&self, n: usize, in_shape: &[usize], _training: bool) -> usize {
        match self.pad_ld::<T>(Self::rows(n, in_shape)) {
            Some(ld) => self.out_features * ld,
            None => 0,
        }
    }

    fn flops(&self, in_shape: &[usize]) -> usize {
        6 * self.in_features * self.out_features * Self::rows(1, in_shape)
    }

    fn forward(&self, f: Forward<'_, T>) {
        let (n, shape, p, x, y) = (f.n, f.in_shape, f.params, f.x, f.y);
        let rows = Self::rows(n, shape);
        let (fi, fo) = (self.in_features, self.out_features);
        let (w, b) = p.split_at(self.weight_len());
        let act = self.act;
        let bias = self.bias;
        let (w, ldb) = match self.pad_ld::<T>(rows) {
            Some(ld) if f.scratch.len() >= fo * ld => {
                let buf = &mut f.scratch[..fo * ld];
                pad_rows(w, fo, fi, ld, buf);
                (&buf[..], ld)
            }
            _ => (w, fi),
        };
        let Split::Rows(rows_per) = plan(rows, fo, fi) else {
            // Column blocks or the gemm crate's split: one product, with the
            // bias (before, as the initial C) and activation (after) passes.
            let y = &mut y[..rows * fo];
            if bias {
                par_rows(y, fo, fo, 1, |_, yc| yc.chunks_exact_mut(fo).for_each(|r| r.copy_from_slice(b)));
            }
            gemm_ldb(false, true, rows, fo, fi, T::ONE, x, w, ldb, if bias { T::ONE } else { T::ZERO }, y);
            forward_inplace(act, y);
            return;
        };
        for_row_chunks(&mut y[..rows * fo], fo, rows_per, |r0, yc| {
            let beta = if bias {
                for row in yc.chunks_exact_mut(fo) {
                    row.copy_from_slice(b);
                }
                T::ONE
            } else {
                T::ZERO
            };
            gemm_rows(false, true, rows, fo, fi, T::ONE, x, w, ldb, beta, r0, yc);
            if act != Act::Identity {
                yc.iter_mut().for_each(|v| *v = act.apply(*v));
            }
        });
    }

    fn backward(&self, b: Backward<'_, T>) {
        let rows = Self::rows(b.n, b.in_shape);
        let (fi, fo) = (self.in_features, self.out_features);
        let accumulate = b.accumulate;
        let (gw, gb) = b.grads.split_at_mut(self.weight_len());
        let gb = if self.bias { Some(gb) } else { None };
        let dz = &mut b.dy[..rows * fo];
        if self.act == Act::Identity {
            if let Some(gb) = gb {
                col_sums(dz, rows, fo, gb, accumulate);
            }
        } else {
            act_backward_bias(self.act, b.y, dz, rows, fo, gb, accumulate);
        }
        let dz = &*dz;
        let beta = if accumulate { T::ONE } else { T::ZERO };
        // dW (out x in) (+)= dz^T (out x rows) . x (rows x in)
        gemm(true, false, fo, fi, rows, T::ONE, dz, b.x, beta, gw);
        if let Some(dx) = b.dx {
            // dx (rows x in) = dz (rows x out) . W (out x in)
            gemm(false, false, rows, fi, fo, T::ONE, dz, &b.params[..self.weight_len()], T::ZERO, dx);
        }
    }

    fn fuse_activation(&mut self, act: Act) -> bool {
        if self.act == Act::Identity && act.derivative_from_output() {
            self.act = act;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::layers::{DenseSpec, ReLUSpec};
    use crate::{Features, Init, LayerSpec, Sequential};

    /// Forward and backward of a fused Dense+ReLU give the same bits on 1, 2
    /// and 4 threads: a row split, the gemm crate's split (4 threads), and a
    /// batch of 32 (kept on one thread).
    #[test]
    fn dense_independent_of_thread_count() {
        dense_same_bits(256, 512, 512);
        dense_same_bits(32, 784, 128);
    }

    fn dense_same_bits(n: usize, fi: usize, fo: usize) {
        let x: Vec<f32> = (0..n * fi).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let dout: Vec<f32> = (0..n * fo).map(|i| ((i * 104_729) % 997) as f32 / 498.0 - 1.0).collect();
        let run = |threads: usize| {
            let specs = vec![
                LayerSpec::Dense(DenseSpec { in_features: fi, out_features: fo, bias: true, init: Init::He }),
                LayerSpec::ReLU(ReLUSpec {}),
            ];
            let mut m = Sequential::<f32>::new(specs, 3).unwrap();
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let y = m.forward(&Features::F32(&x), n, &[fi], true).unwrap().to_vec();
                m.backward(&dout, &[n, fo]).unwrap();
                (y, m.grads().to_vec())
            })
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(4));
    }
}
